import Foundation
import Images
import TestSupport

/// Builds reference images with qemu-img and qemu-io, and reads back what
/// QEMU says they contain: the oracles the reader tests compare against.
enum Fixture {
    /// Runs qemu-img with `args`; returns stdout.
    @discardableResult
    static func qemuImg(_ args: String...) throws -> String { try Shell.check(["qemu-img"] + args) }

    /// Runs each qemu-io command (e.g. "write -P 0xab 64k 128k") against `image`.
    static func qemuIO(_ image: String, format: String = "qcow2", _ commands: [String]) throws {
        var args = ["qemu-io", "-f", format]
        for c in commands { args += ["-c", c] }
        let r = try Shell.run(args + [image])
        // qemu-io exits 0 even when a command fails; it says so on stdout/stderr.
        guard r.succeeded, !r.stdout.contains("failed"), !r.stderr.contains("failed") else {
            throw QemuIOFailure(commands: commands, image: image, output: r.stdout + r.stderr)
        }
    }

    /// Creates an empty qcow2 image of `size` bytes.
    static func create(_ path: String, size: UInt64, clusterSize: Int = 65536, backing: String? = nil,
                       backingFormat: String = "qcow2") throws {
        var args = ["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=\(clusterSize)"]
        if let backing { args += ["-b", backing, "-F", backingFormat] }
        try Shell.check(args + [path, String(size)])
    }

    /// The guest bytes as `qemu-img convert -O raw` produces them.
    static func guestBytes(_ image: String, in dir: TemporaryDirectory) throws -> [UInt8] {
        let out = dir.file(UUID().uuidString + ".raw")
        defer { try? FileManager.default.removeItem(atPath: out) }
        try qemuImg("convert", "-O", "raw", image, out)
        return try bytes(of: out)
    }

    static func bytes(of path: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    /// `qemu-img map --output=json`, reduced to data/zero runs ("data": true → data).
    static func qemuMapping(_ image: String, format: String? = nil) throws -> [ImageExtent] {
        var args = ["qemu-img", "map", "--output=json"]
        if let format { args += ["-f", format] }
        let json = try Shell.check(args + [image])
        let list = try JSONSerialization.jsonObject(with: Data(json.utf8)) as! [[String: Any]]
        var merged: [ImageExtent] = []
        for item in list {
            let e = ImageExtent(offset: (item["start"] as! NSNumber).uint64Value,
                                length: (item["length"] as! NSNumber).uint64Value,
                                kind: (item["data"] as! Bool) ? .data : .zero)
            if let last = merged.last, last.kind == e.kind, last.end == e.offset {
                merged[merged.count - 1].length += e.length
            } else {
                merged.append(e)
            }
        }
        return merged
    }

    /// Everything the reader returns for the whole disk, in one call.
    static func readAll(_ reader: ImageReader) throws -> [UInt8] {
        try read(reader, at: 0, count: Int(reader.virtualSize))
    }

    /// The whole disk read in `chunk`-sized calls that straddle cluster boundaries.
    static func readChunked(_ reader: ImageReader, chunk: Int) throws -> [UInt8] {
        var out = [UInt8]()
        var offset: UInt64 = 0
        while offset < reader.virtualSize {
            let n = Int(min(UInt64(chunk), reader.virtualSize - offset))
            out += try read(reader, at: offset, count: n)
            offset += UInt64(n)
        }
        return out
    }

    static func read(_ reader: ImageReader, at offset: UInt64, count: Int) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0x5A, count: count)  // not zero: zero runs must be written
        try buf.withUnsafeMutableBytes { try reader.read(into: $0.baseAddress!, count: count, at: offset) }
        return buf
    }

    /// A raw file of `size` bytes: stretches of random bytes, of low-entropy
    /// (compressible) bytes and of zeros, in a repeatable pseudo-random order.
    static func mixedRaw(_ path: String, size: Int, seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        var bytes = [UInt8](repeating: 0, count: size)
        var offset = 0
        while offset < size {
            let run = min(size - offset, Int(rng.next() % 96 + 8) * 1024 + Int(rng.next() % 512))
            switch rng.next() % 3 {
            case 0: for i in offset..<(offset + run) { bytes[i] = UInt8(truncatingIfNeeded: rng.next()) }
            case 1: for i in offset..<(offset + run) { bytes[i] = UInt8(truncatingIfNeeded: rng.next() & 0x0F) | 0x40 }
            default: break
            }
            offset += run
        }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    /// A qcow2 image converted from `mixedRaw` content: random and
    /// compressible data in allocated clusters, zeros left unallocated.
    static func randomQcow2(_ path: String, size: Int, clusterSize: Int, seed: UInt64, in dir: TemporaryDirectory) throws {
        let source = dir.file(UUID().uuidString + ".raw")
        defer { try? FileManager.default.removeItem(atPath: source) }
        try mixedRaw(source, size: size, seed: seed)
        try qemuImg("convert", "-O", "qcow2", "-o", "cluster_size=\(clusterSize)", source, path)
    }

    /// Overwrites bytes of a file in place.
    static func patch(_ path: String, at offset: UInt64, _ bytes: [UInt8]) throws {
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        defer { try? h.close() }
        try h.seek(toOffset: offset)
        h.write(Data(bytes))
    }

    static func bigEndian(_ value: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: value >> (56 - 8 * $0)) } }

    static func header(of path: String) throws -> Qcow2Header {
        try Qcow2Header(decoding: Array(try bytes(of: path).prefix(4096)))
    }

    /// The error text opening `path` fails with, nil when it opens.
    static func openFailure(_ path: String) -> String? {
        do { _ = try openImage(path: path); return nil } catch { return "\(error)" }
    }
}

/// A qemu-io command that did not do what it was asked.
struct QemuIOFailure: Error, CustomStringConvertible {
    let commands: [String]
    let image: String
    let output: String
    var description: String { "qemu-io \(commands) on \(image) failed: \(output)" }
}

/// A small, repeatable generator (Steele, Lea, Flood: SplitMix64).
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
