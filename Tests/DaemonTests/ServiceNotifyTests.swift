import ControlProtocol
import Foundation
import Testing
import TestSupport

/// The service manager's end of sd_notify(3): a datagram socket the test
/// binds, as systemd does for a `Type=notify` unit, and every line it received.
final class NotifyListener: @unchecked Sendable {
    enum Address { case path(String), abstract(String) }
    /// What goes into `$NOTIFY_SOCKET`.
    let address: String
    private let fd: Int32
    private let path: String?
    /// Every line received so far, in order (one datagram may hold several).
    private(set) var lines: [String] = []

    init(_ where_: Address) throws {
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno)!) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var bytes: [UInt8]
        switch where_ {
        case .path(let p):
            address = p; path = p; bytes = Array(p.utf8) + [0]
        case .abstract(let name):
            address = "@" + name; path = nil; bytes = [0] + Array(name.utf8)
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in bytes.enumerated() { p[i] = b } }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)! + bytes.count)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard rc == 0 else {
            let e = errno
            close(fd)
            throw POSIXError(POSIXErrorCode(rawValue: e)!)
        }
    }

    deinit {
        close(fd)
        if let path { unlink(path) }
    }

    /// Receives until a line satisfies `predicate` (returned) or `timeout`
    /// seconds pass (nil). A generous deadline: it bounds a hang, it does not
    /// judge speed.
    func wait(timeout: TimeInterval = 120, for predicate: (String) -> Bool) -> String? {
        var seen = 0
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            while seen < lines.count {
                defer { seen += 1 }
                if predicate(lines[seen]) { return lines[seen] }
            }
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else { return nil }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, Int32(min(left, 1) * 1000)) > 0 else { continue }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let n = recv(fd, &buffer, buffer.count, 0)
            guard n > 0 else { continue }
            lines += String(decoding: buffer[..<n], as: UTF8.self).split(separator: "\n").map(String.init)
        }
    }

    /// Waits for exactly `line`.
    func wait(for line: String, timeout: TimeInterval = 120) -> Bool {
        wait(timeout: timeout) { $0 == line } != nil
    }
}

/// ringbackd under a service manager (`Type=notify`, packaging/ringbackd.service):
/// the real daemon with `$NOTIFY_SOCKET` pointing at a socket the test listens on.
@Suite(.enabled(if: TestEnvironment.canUseLoopDevices, Comment(rawValue: TestEnvironment.loopSkipReason)),
       .serialized)
struct ServiceNotifyTests {
    enum Kind: String, CaseIterable { case path, abstract }

    func listener(_ kind: Kind, in dir: TemporaryDirectory) throws -> NotifyListener {
        switch kind {
        case .path: try NotifyListener(.path(dir.file("notify.sock")))
        case .abstract: try NotifyListener(.abstract("ringback-test-notify-\(getpid())-\(UInt32.random(in: 0 ... .max))"))
        }
    }

    @Test(arguments: Kind.allCases)
    func readyStatusWatchdogAndStopping(kind: Kind) throws {
        let dir = try TemporaryDirectory()
        let notify = try listener(kind, in: dir)
        // 400 ms: pings every 200 ms, so a short test sees several.
        let daemon = try DaemonProcess(in: dir, environment: ["NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "400000"])
        defer { daemon.stop() }

        #expect(notify.wait(for: "READY=1"), "no READY=1; daemon log:\n\(daemon.log())")
        let status = notify.wait { $0.hasPrefix("STATUS=") }
        #expect(status == "STATUS=tracking 0 devices (0 bitmaps), 0 jobs running")
        #expect(notify.wait(for: "WATCHDOG=1"), "no WATCHDOG=1; daemon log:\n\(daemon.log())")
        // The daemon answers on its control socket while it pings.
        #expect(try QMPClient(path: daemon.socket).execute("query-version")["package"]?.stringValue
            == "ringback \(RingbackVersion.string)")

        daemon.stop()
        #expect(notify.wait(for: "STOPPING=1"), "no STOPPING=1; daemon log:\n\(daemon.log())")
        let lines = notify.lines
        // READY first; after STOPPING no keep-alive (the stop is the stop timeout's business).
        #expect(lines.firstIndex(of: "READY=1") == 0)
        if let stop = lines.firstIndex(of: "STOPPING=1") {
            #expect(!lines[stop...].contains("WATCHDOG=1"))
        }
    }

    /// STATUS follows what the daemon does: a tracked device and its bitmap
    /// appear in it, and disappear again.
    @Test func statusFollowsTrackedDevices() throws {
        let dir = try TemporaryDirectory()
        let notify = try listener(.path, in: dir)
        let device = try LoopDevice(size: 16 << 20, in: dir.path)
        let daemon = try DaemonProcess(in: dir, environment: ["NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "400000"])
        defer { daemon.stop() }
        #expect(notify.wait(for: "READY=1"))

        let qmp = try QMPClient(path: daemon.socket)
        try qmp.execute("block-dirty-bitmap-add", ["node": .string(device.path), "name": .string("nightly")])
        #expect(notify.wait(for: "STATUS=tracking 1 device (1 bitmap), 0 jobs running"),
                "lines: \(notify.lines.filter { $0.hasPrefix("STATUS=") })")
        // Removing the last bitmap stops tracking the device (DESIGN §7).
        try qmp.execute("block-dirty-bitmap-remove", ["node": .string(device.path), "name": .string("nightly")])
        #expect(notify.wait(for: "STATUS=tracking 0 devices (0 bitmaps), 0 jobs running"),
                "lines: \(notify.lines.filter { $0.hasPrefix("STATUS=") })")
    }

    /// The keep-alive is the main process's alone: with `$WATCHDOG_PID` naming
    /// another process (a child that inherited the variables), no WATCHDOG=1.
    @Test func watchdogForAnotherProcessIsNotSent() throws {
        let dir = try TemporaryDirectory()
        let notify = try listener(.path, in: dir)
        let daemon = try DaemonProcess(in: dir, environment: [
            "NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": String(getpid()),
        ])
        defer { daemon.stop() }
        #expect(notify.wait(for: "READY=1"))
        // Several 100 ms periods pass while these commands round-trip; then stop.
        for _ in 0..<10 {
            _ = try QMPClient(path: daemon.socket).execute("query-block")
            usleep(100_000)
        }
        daemon.stop()
        #expect(notify.wait(for: "STOPPING=1"))
        #expect(!notify.lines.contains("WATCHDOG=1"), "lines: \(notify.lines)")
    }

    /// A `$NOTIFY_SOCKET` the daemon cannot use is a start-up error that names
    /// the variable and the reason, not a service that never reports ready.
    @Test(arguments: ["relative/notify.sock", "vsock:2:1234"])
    func unusableNotifySocketIsAnError(address: String) throws {
        let dir = try TemporaryDirectory()
        #expect {
            _ = try DaemonProcess(in: dir, environment: ["NOTIFY_SOCKET": address])
        } throws: { error in
            "\(error)".contains("NOTIFY_SOCKET '\(address)' is neither an absolute path nor an abstract name")
        }
    }
}
