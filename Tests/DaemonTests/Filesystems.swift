import ControlProtocol
import Foundation
import Testing
import TestSupport

/// An ext4 filesystem on a loop device, mounted; unmounted (thawed first) when released.
final class MountedExt4: @unchecked Sendable {
    let device: LoopDevice
    let mountPoint: String
    init(in dir: TemporaryDirectory, name: String = "fs", size: UInt64 = 64 << 20) throws {
        device = try LoopDevice(size: size, in: dir.path, name: name + ".img")
        mountPoint = dir.file(name)
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        try Shell.check(["mkfs.ext4", "-q", "-F", device.path])
        try Shell.check(["mount", device.path, mountPoint])
    }
    /// Whether a file can be created and synced within `seconds`. A writer
    /// on a frozen filesystem sleeps uninterruptibly until the thaw, so it
    /// is not waited for: it finishes on its own once thawed.
    func writable(within seconds: Double) -> Bool {
        let file = mountPoint + "/probe-\(UInt32.random(in: 0...UInt32.max))"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", "echo x > \(file) && sync -f \(file)"]
        guard (try? p.run()) != nil else { return false }
        let deadline = Date().addingTimeInterval(seconds)
        while p.isRunning && Date() < deadline { usleep(10_000) }
        return !p.isRunning && p.terminationStatus == 0
    }
    deinit {
        _ = try? Shell.run(["fsfreeze", "-u", mountPoint])
        _ = try? Shell.run(["umount", mountPoint])
        device.detach()
    }
}

/// Tests/tools/seqwriter.py writing numbered, checksummed files to mounted
/// filesystems in turn until stopped; `check` verifies a restored copy.
final class SequenceWriter: @unchecked Sendable {
    static var script: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("tools/seqwriter.py").path
    }
    private let process = Process()
    private let output = Pipe()

    init(mounts: [String], delay: Double = 0.002) throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = [Self.script, "--delay", String(delay)] + mounts
        process.standardOutput = output
        try process.run()
    }

    /// Stops the writer; returns how many files it completed.
    func stop() -> Int {
        guard process.isRunning else { return -1 }
        process.terminate()
        process.waitUntilExit()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        return Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
    }

    /// The length of the unbroken, checksum-correct prefix on `mounts`, or
    /// nil with the checker's reason.
    static func check(_ mounts: [String]) throws -> (prefix: Int?, reason: String) {
        let r = try Shell.run(["/usr/bin/python3", script, "--check"] + mounts)
        let k = r.succeeded ? Int(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) : nil
        return (k, r.stderr)
    }

    deinit { _ = stop() }
}

/// A raw image attached read-only and mounted, for looking inside a restore.
final class MountedImage: @unchecked Sendable {
    let loop: String
    let mountPoint: String
    init(raw: String, at mountPoint: String) throws {
        self.mountPoint = mountPoint
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        loop = try Shell.check(["losetup", "-f", "--show", "-r", raw]).trimmingCharacters(in: .whitespacesAndNewlines)
        do { try Shell.check(["mount", "-o", "ro", loop, mountPoint]) } catch {
            _ = try? Shell.run(["losetup", "-d", loop])
            throw error
        }
    }
    deinit {
        _ = try? Shell.run(["umount", mountPoint])
        _ = try? Shell.run(["losetup", "-d", loop])
    }
}
