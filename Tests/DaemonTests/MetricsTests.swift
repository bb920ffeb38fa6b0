import ControlProtocol
import Foundation
import Testing
import TestSupport

/// ringbackd's metrics and logs end to end: the real daemon with its HTTP
/// endpoint or textfile, real loop devices and backups through the CLI; the
/// figures are checked against what the daemon says over QMP and the CLI
/// reports, and the whole exposition against Prometheus' own `promtool`.
@Suite(.enabled(if: TestEnvironment.canUseLoopDevices, Comment(rawValue: TestEnvironment.loopSkipReason)),
       .serialized)
struct MetricsTests {
    static let jobStatuses = ["created", "running", "paused", "ready", "standby", "waiting", "pending", "aborting", "concluded"]

    @Test("the HTTP endpoint mirrors the daemon: bytes copied, dirty bytes, tracker events, jobs per status")
    func endpointMirrorsTheDaemon() throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 32 << 20, in: dir.path, fill: .randomWithZeroRuns(run: 1 << 20))
        let daemon = try DaemonProcess(in: dir, extraArguments: ["--metrics-listen", "127.0.0.1:0"])
        let port = try metricsPort(daemon)
        let dev = device.path
        let chain = dir.file("chain")
        try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)
        #expect(try daemon.ringback(["bitmap", "add", dev, "b0"]).succeeded)

        // Before any backup the device's counter is there, at zero.
        var m = try scrape(port)
        #expect(m.value("ringback_bytes_copied_total", ["device": dev]) == 0)
        #expect(m.value("ringback_bitmap_dirty_bytes", ["device": dev, "bitmap": "b0"]) == 0)

        // A full backup through the CLI: the counter is what it read.
        let fullRead = try backup(daemon, [dev, "--sync", "full", "--to", chain])
        #expect(fullRead > 0)
        m = try scrape(port)
        #expect(m.value("ringback_bytes_copied_total", ["device": dev]) == Double(fullRead))

        // Writes: the dirty-bytes gauge is query-block's count; the tracker saw them.
        try device.write([UInt8](repeating: 7, count: 3 * 65_536), at: 4 << 20)
        try device.write([UInt8](repeating: 9, count: 4096), at: 20 << 20)
        let qmp = try QMPSession(socket: daemon.socket)
        let count = try #require(try qmp.count(dev, "b0"))
        #expect(count == 4 * 65_536)
        m = try scrape(port)
        #expect(m.value("ringback_bitmap_dirty_bytes", ["device": dev, "bitmap": "b0"]) == Double(count))
        #expect(m.value("ringback_bitmap_inconsistent", ["device": dev, "bitmap": "b0"]) == 0)
        #expect((m.value("ringback_tracker_events_total", ["device": dev]) ?? 0) > 0)
        #expect(m.value("ringback_tracker_dropped_events_total", ["device": dev]) == 0)

        // An incremental adds what it read; its bitmap is clean again.
        let incRead = try backup(daemon, [dev, "--sync", "incremental", "--bitmap", "b0", "--to", chain])
        #expect(incRead >= count)
        m = try scrape(port)
        #expect(m.value("ringback_bytes_copied_total", ["device": dev]) == Double(fullRead + incRead))
        #expect(m.value("ringback_bitmap_dirty_bytes", ["device": dev, "bitmap": "b0"]) == 0)

        // Jobs in three statuses: one concluded (kept), one running (held back
        // by a speed limit), one paused.
        try qmp.execute("drive-backup", qmpArgs(["device": dev, "target": dir.file("kept.qcow2"), "sync": "full",
                                                  "job-id": "kept", "auto-dismiss": false]))
        try qmp.waitForStatus("kept", "concluded")
        try qmp.execute("drive-backup", qmpArgs(["device": dev, "target": dir.file("slow.qcow2"), "sync": "full",
                                                  "job-id": "slow", "speed": 65_536]))
        try qmp.execute("drive-backup", qmpArgs(["device": dev, "target": dir.file("held.qcow2"), "sync": "full",
                                                  "job-id": "held", "speed": 65_536]))
        try qmp.waitForStatus("slow", "running")
        try qmp.waitForStatus("held", "running")
        try qmp.execute("job-pause", qmpArgs(["id": "held"]))
        try qmp.waitForStatus("held", "paused")
        var perStatus: [String: Int] = [:]
        for job in try qmp.execute("query-jobs").arrayValue ?? [] {
            perStatus[job["status"]?.stringValue ?? "?", default: 0] += 1
        }
        #expect(perStatus == ["concluded": 1, "running": 1, "paused": 1])
        let text = try scrapeText(port)
        m = Exposition(text)
        for status in Self.jobStatuses {
            #expect(m.value("ringback_jobs", ["status": status]) == Double(perStatus[status] ?? 0), "status \(status)")
        }
        #expect(m.value("ringback_copy_throughput_bytes_per_second", ["job": "slow", "device": dev]).map { $0 >= 0 } == true)
        #expect(m.value("ringback_copy_throughput_bytes_per_second", ["job": "held", "device": dev]) != nil)
        #expect(m.value("ringback_copy_throughput_bytes_per_second", ["job": "kept", "device": dev]) == nil)

        // With every family present, Prometheus' own linter accepts the whole exposition.
        try expectPromtoolAccepts(text)
        for family in text.split(separator: "\n").filter({ $0.hasPrefix("# TYPE ") }) {
            let name = family.split(separator: " ")[2]
            #expect(text.contains("# HELP \(name) "), "\(name) has no HELP line")
        }

        // Series of jobs and bitmaps that went away leave the exposition.
        try qmp.execute("job-cancel", qmpArgs(["id": "slow"]))
        try qmp.execute("job-cancel", qmpArgs(["id": "held"]))
        _ = try qmp.waitForEnd(of: "slow")
        _ = try qmp.waitForEnd(of: "held")
        try qmp.execute("job-dismiss", qmpArgs(["id": "kept"]))
        try qmp.waitForStatus("held", "null")
        try qmp.waitForStatus("slow", "null")
        #expect(try daemon.ringback(["bitmap", "remove", dev, "b0"]).succeeded)
        m = try scrape(port)
        #expect(m.samples.filter { $0.name == "ringback_copy_throughput_bytes_per_second" }.isEmpty)
        #expect(m.samples.filter { $0.name == "ringback_bitmap_dirty_bytes" }.isEmpty)
        for status in Self.jobStatuses { #expect(m.value("ringback_jobs", ["status": status]) == 0, "status \(status)") }
        // A counter stays: what was copied was copied.
        #expect((m.value("ringback_bytes_copied_total", ["device": dev]) ?? 0) >= Double(fullRead + incRead))

        // The log: one line per record, priority first, then the time; the
        // job lines carry their job and device as metadata.
        daemon.stop()
        let lines = daemon.log().split(separator: "\n").map(String.init)
        let shape = #/^<[0-7]>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d (trace|debug|info|notice|warning|error|critical) ringbackd: /#
        for line in lines { #expect(line.firstMatch(of: shape) != nil, "log line without priority and time: \(line)") }
        let completed = try #require(lines.first { $0.contains("job 'kept' completed") }, "\(lines)")
        #expect(completed.hasPrefix("<6>") && completed.contains(" job=kept") && completed.contains(" device=\(dev)"), "\(completed)")
        let cancelled = try #require(lines.first { $0.contains("job 'slow' cancelled") }, "\(lines)")
        #expect(cancelled.hasPrefix("<5>") && cancelled.contains(" job=slow") && cancelled.contains(" device=\(dev)"), "\(cancelled)")
        #expect(lines.contains { $0.hasPrefix("<6>") && $0.contains("ringbackd: stopped") })
    }

    @Test("the endpoint answers 404, 405 and 400 as HTTP says, and a stalled client does not stop the next scrape")
    func endpointAnswers() throws {
        let dir = try TemporaryDirectory()
        let daemon = try DaemonProcess(in: dir, extraArguments: ["--metrics-listen", "127.0.0.1:0"])
        let port = try metricsPort(daemon)
        #expect(try http(port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").status == 404)
        #expect(try http(port, "GET /metricsx HTTP/1.1\r\nHost: x\r\n\r\n").status == 404)
        let post = try http(port, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        #expect(post.status == 405 && post.head.contains("Allow: GET, HEAD"))
        #expect(try http(port, "hello\r\n\r\n").status == 400)
        let head = try http(port, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(head.status == 200 && head.body.isEmpty && head.head.contains("Content-Length: "))
        let get = try http(port, "GET /metrics?x=1 HTTP/1.0\r\n\r\n")
        #expect(get.status == 200 && get.head.contains("text/plain; version=0.0.4"))
        #expect(get.head.contains("Content-Length: \(get.body.utf8.count)\r\n"))

        // A client that connects and says half a request: the daemon still
        // answers on its socket, and the next scrape is served once the
        // stalled one times out.
        let stalled = try connect(port)
        defer { close(stalled) }
        _ = "GET /metr".withCString { send(stalled, $0, 9, 0) }
        #expect(try QMPClient(path: daemon.socket).execute("query-version")["package"] == .string("ringback 0.1.0"))
        #expect(try http(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").status == 200)
    }

    @Test("freezes: each one's duration in the histogram, one the watchdog ended counted and logged as a warning")
    func freezeDurations() throws {
        let dir = try TemporaryDirectory()
        let fs = try MountedExt4(in: dir)
        let slow = dir.file("slow")
        // Inside the freeze, a hook outlasts the 1 s freeze timeout once `slow` exists.
        let hooks = try QuiesceTests.hooks(in: dir, phase: "frozen", body: "[ -e \(slow) ] && sleep 2")
        let daemon = try DaemonProcess(in: dir, extraArguments: ["--metrics-listen", "127.0.0.1:0", "--hooks-dir", hooks,
                                                                 "--freeze-timeout", "1"])
        let port = try metricsPort(daemon)
        let qmp = try QMPSession(socket: daemon.socket)
        try qmp.execute("block-dirty-bitmap-add", qmpArgs(["node": fs.device.path, "name": "b0"]))
        var m = try scrape(port)
        #expect(m.value("ringback_freeze_duration_seconds_count") == 0)
        #expect(m.value("ringback_freeze_expired_total") == 0)

        let clear = qmpArgs(["actions": [action("block-dirty-bitmap-clear", ["node": fs.device.path, "name": "b0"])]])
        try qmp.execute("transaction", clear)
        let thawed = try qmp.waitFor("X_FILESYSTEMS_THAWED")
        let seconds = try #require(thawed["data"]?["seconds"]?.doubleValue)
        #expect(thawed["data"]?["expired"] == .bool(false))
        m = try scrape(port)
        #expect(m.value("ringback_freeze_duration_seconds_count") == 1)
        #expect(abs((m.value("ringback_freeze_duration_seconds_sum") ?? -1) - seconds) < 1e-6)
        #expect(m.value("ringback_freeze_duration_seconds_bucket", ["le": "+Inf"]) == 1)
        #expect(m.value("ringback_freeze_expired_total") == 0)

        _ = FileManager.default.createFile(atPath: slow, contents: nil)
        #expect(try qmp.error("transaction", clear).contains("ended"))
        m = try scrape(port)
        #expect(m.value("ringback_freeze_duration_seconds_count") == 2)
        #expect(m.value("ringback_freeze_expired_total") == 1)
        try expectPromtoolAccepts(try scrapeText(port))
        let warning = daemon.log().split(separator: "\n").first { $0.contains("the watchdog thawed \(fs.mountPoint)") }
        #expect(warning?.hasPrefix("<4>") == true && warning?.contains(" mount-points=\(fs.mountPoint)") == true, "\(daemon.log())")
        try qmp.execute("block-dirty-bitmap-remove", qmpArgs(["node": fs.device.path, "name": "b0"]))
    }

    @Test("the textfile is valid for promtool, replaced by rename (never seen half-written), and nothing is left behind")
    func textfileIsReplacedAtomically() throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 16 << 20, in: dir.path)
        let file = dir.file("ringback.prom")
        let daemon = try DaemonProcess(in: dir, extraArguments: ["--metrics-textfile", file, "--metrics-textfile-interval", "0.1"])
        #expect(try daemon.ringback(["bitmap", "add", device.path, "b0"]).succeeded)
        try device.write([UInt8](repeating: 1, count: 2 * 65_536), at: 1 << 20)
        let count = try #require(try QMPSession(socket: daemon.socket).count(device.path, "b0"))
        #expect(count == 2 * 65_536)

        // Within a few rewrites the file shows the bitmap's count.
        var text = ""
        for _ in 0..<300 {
            text = (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
            if Exposition(text).value("ringback_bitmap_dirty_bytes", ["device": device.path, "bitmap": "b0"]) == Double(count) { break }
            usleep(20_000)
        }
        #expect(Exposition(text).value("ringback_bitmap_dirty_bytes", ["device": device.path, "bitmap": "b0"]) == Double(count))
        try expectPromtoolAccepts(text)
        let families = Set(text.split(separator: "\n").filter { $0.hasPrefix("# TYPE ") })

        // Read it as node_exporter would, many times while it is rewritten:
        // every read is a whole export, and the file is a new inode each time
        // (renamed into place, not rewritten in place).
        var inodes = Set<UInt64>()
        for i in 0..<400 {
            let fd = open(file, O_RDONLY)
            guard fd >= 0 else {
                Issue.record("\(file) missing at read \(i)")
                break
            }
            var st = stat()
            fstat(fd, &st)
            inodes.insert(UInt64(st.st_ino))
            var data = [UInt8]()
            var buffer = [UInt8](repeating: 0, count: 65_536)
            while true {
                let n = read(fd, &buffer, buffer.count)
                if n <= 0 { break }
                data += buffer[0..<n]
            }
            close(fd)
            let seen = String(decoding: data, as: UTF8.self)
            #expect(seen.hasSuffix("\n") && Set(seen.split(separator: "\n").filter { $0.hasPrefix("# TYPE ") }) == families,
                    "read \(i) saw a partial file:\n\(seen)")
            usleep(5_000)
        }
        #expect(inodes.count > 1, "the file was never replaced")
        daemon.stop()
        #expect(!FileManager.default.fileExists(atPath: file + ".tmp"))
        let mode = try FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? Int
        #expect(mode == 0o644)
    }

    @Test("the textfile is written at start and once more at shutdown")
    func textfileAtShutdown() throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 16 << 20, in: dir.path)
        let file = dir.file("ringback.prom")
        // An hour between rewrites: only start and stop write it in this test.
        let daemon = try DaemonProcess(in: dir, extraArguments: ["--metrics-textfile", file, "--metrics-textfile-interval", "3600"])
        var text = try String(contentsOfFile: file, encoding: .utf8)
        try expectPromtoolAccepts(text)
        #expect(Exposition(text).samples.filter { $0.name == "ringback_bitmap_dirty_bytes" }.isEmpty)
        #expect(try daemon.ringback(["bitmap", "add", device.path, "b0"]).succeeded)
        try device.write([UInt8](repeating: 1, count: 65_536), at: 3 << 20)
        let count = try #require(try QMPSession(socket: daemon.socket).count(device.path, "b0"))
        daemon.stop()
        text = try String(contentsOfFile: file, encoding: .utf8)
        try expectPromtoolAccepts(text)
        #expect(Exposition(text).value("ringback_bitmap_dirty_bytes", ["device": device.path, "bitmap": "b0"]) == Double(count))
        #expect(count == 65_536)
    }

    @Test("bad metrics options stop ringbackd before it starts, with a clear error", arguments: [
        (["--metrics-listen", "0.0.0.0:9469"], "0.0.0.0 is not a loopback address"),
        (["--metrics-listen", "[::]:9469"], ":: is not a loopback address"),
        (["--metrics-listen", "127.0.0.1"], "expected HOST:PORT"),
        (["--metrics-listen", "127.0.0.1:99999"], "is not a number from 0 to 65535"),
        (["--metrics-textfile", "/nonexistent-ringback-dir/ringback.prom"], "the folder /nonexistent-ringback-dir does not exist"),
        (["--metrics-textfile", "/tmp/x.prom", "--metrics-textfile-interval", "0"], "must be a positive number of seconds"),
        (["--log-level", "loud"], "--log-level"),
    ])
    func badOptionsAreRefused(arguments: [String], message: String) throws {
        let dir = try TemporaryDirectory()
        let r = try runDaemonExpectingExit(dir, arguments)
        #expect(r.status != 0 && r.status != 137, "status \(r.status)")
        #expect(r.stderr.contains(message), "\(r.stderr)")
        if arguments[1].contains("0.0.0.0") { #expect(r.stderr.contains("--metrics-allow-non-loopback"), "\(r.stderr)") }
        // Refused before anything was set up.
        #expect(!FileManager.default.fileExists(atPath: dir.file("state/tracked.json")))
    }

    @Test("a port in use is an error naming the address and the reason")
    func portInUse() throws {
        let dir = try TemporaryDirectory()
        let first = try DaemonProcess(in: dir, extraArguments: ["--metrics-listen", "127.0.0.1:0"])
        let port = try metricsPort(first)
        let other = try TemporaryDirectory()
        let r = try runDaemonExpectingExit(other, ["--metrics-listen", "127.0.0.1:\(port)"])
        #expect(r.status != 0 && r.status != 137)
        #expect(r.stderr.contains("cannot listen on 127.0.0.1:\(port) for metrics") && r.stderr.contains("EADDRINUSE"), "\(r.stderr)")
        #expect(try http(port, "GET /metrics HTTP/1.1\r\n\r\n").status == 200)
    }

    @Test("under journald (stderr is $JOURNAL_STREAM) lines carry no time of their own; --log-level filters")
    func journaldAndLevels() throws {
        let dir = try TemporaryDirectory()
        // stderr is the stream JOURNAL_STREAM names: journald's form.
        let journal = try runBriefly(dir, "journal", [], journalStreamOfLog: true)
        let listening = try #require(journal.split(separator: "\n").first { $0.contains("listening on") }, "\(journal)")
        #expect(listening.hasPrefix("<6>listening on \(dir.file("journal.sock"))"), "\(listening)")
        #expect(listening.contains(" socket=\(dir.file("journal.sock"))") && listening.contains(" state-dir="), "\(listening)")
        // A JOURNAL_STREAM inherited by a process whose stderr is elsewhere: timestamps.
        let redirected = try runBriefly(dir, "redirected", [], environment: ["JOURNAL_STREAM": "1:1"])
        #expect(redirected.split(separator: "\n").contains { $0.firstMatch(of: #/^<6>\d{4}-\d\d-\d\dT[^ ]+ info ringbackd: listening on /#) != nil },
                "\(redirected)")
        // Warnings and worse only: no info line at all.
        let quiet = try runBriefly(dir, "quiet", ["--log-level", "warning"])
        #expect(!quiet.contains("<6>") && !quiet.contains("listening on"), "\(quiet)")
    }

    // MARK: helpers

    /// The port a daemon started with `--metrics-listen 127.0.0.1:0` took, from its log.
    func metricsPort(_ daemon: DaemonProcess) throws -> UInt16 {
        for _ in 0..<200 {
            if let match = daemon.log().firstMatch(of: #/metrics on http://127\.0\.0\.1:(\d+)/metrics/#), let port = UInt16(match.1) {
                return port
            }
            usleep(25_000)
        }
        throw Failure("ringbackd never said where its metrics are:\n\(daemon.log())")
    }

    /// A backup through the CLI; returns the bytes it reports it read.
    func backup(_ daemon: DaemonProcess, _ args: [String]) throws -> UInt64 {
        let r = try daemon.ringback(["backup"] + args + ["--json"])
        guard r.succeeded else { throw Failure("ringback backup \(args) failed: \(r.stderr)") }
        let summary = try JSONValue.parse(Data(r.stdout.utf8))
        guard let read = (summary["backup"] ?? summary)["bytes_read"]?.intValue else { throw Failure("no bytes_read in \(r.stdout)") }
        return UInt64(read)
    }

    func scrapeText(_ port: UInt16) throws -> String {
        let r = try http(port, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        guard r.status == 200 else { throw Failure("GET /metrics answered \(r.status): \(r.body)") }
        return r.body
    }

    func scrape(_ port: UInt16) throws -> Exposition { Exposition(try scrapeText(port)) }

    func expectPromtoolAccepts(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        guard Shell.has("promtool") else {
            Issue.record(Comment(rawValue: "promtool is missing: run scripts/setup.sh (Debian package prometheus)"),
                         sourceLocation: sourceLocation)
            return
        }
        let r = try Shell.run(["promtool", "check", "metrics"], stdin: text)
        #expect(r.succeeded, "promtool check metrics: \(r.stdout)\(r.stderr)\n\(text)", sourceLocation: sourceLocation)
    }

    func connect(_ port: UInt16) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard fd >= 0, rc == 0 else {
            close(fd)
            throw Failure("cannot connect to 127.0.0.1:\(port): errno \(errno)")
        }
        var timeout = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    /// Sends `request` as it is and reads the answer until the server closes.
    func http(_ port: UInt16, _ request: String) throws -> (status: Int, head: String, body: String) {
        let fd = try connect(port)
        defer { close(fd) }
        let bytes = Array(request.utf8)
        guard send(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL)) == bytes.count else { throw Failure("cannot send the request") }
        var data = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n < 0 { throw Failure("no answer from 127.0.0.1:\(port): errno \(errno)") }
            if n == 0 { break }
            data += buffer[0..<n]
        }
        let text = String(decoding: data, as: UTF8.self)
        guard let split = text.range(of: "\r\n\r\n") else { throw Failure("not an HTTP answer: \(text)") }
        let head = String(text[..<split.lowerBound]) + "\r\n"
        let status = head.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? -1
        return (status, head, String(text[split.upperBound...]))
    }

    /// Runs ringbackd with bad options; killed after a minute if it does not exit.
    func runDaemonExpectingExit(_ dir: TemporaryDirectory, _ arguments: [String]) throws -> Shell.Result {
        try Shell.run(["timeout", "-s", "KILL", "60", DaemonProcess.binary, "--socket", dir.file("qmp.sock"),
                       "--state-dir", dir.file("state")] + arguments)
    }

    /// Starts ringbackd with stderr in NAME.log, waits for its socket, stops
    /// it, and returns the log. `journalStreamOfLog` sets JOURNAL_STREAM to
    /// that file's device and inode, as systemd does for its journal stream.
    func runBriefly(_ dir: TemporaryDirectory, _ name: String, _ arguments: [String],
                    environment: [String: String] = [:], journalStreamOfLog: Bool = false) throws -> String {
        let log = dir.file("\(name).log")
        let socketPath = dir.file("\(name).sock")
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        var env = ProcessInfo.processInfo.environment
        env["JOURNAL_STREAM"] = nil
        env.merge(environment) { $1 }
        if journalStreamOfLog {
            var st = stat()
            stat(log, &st)
            env["JOURNAL_STREAM"] = "\(UInt64(st.st_dev)):\(UInt64(st.st_ino))"
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: DaemonProcess.binary)
        p.arguments = ["--socket", socketPath, "--state-dir", dir.file("\(name)-state")] + arguments
        p.environment = env
        let handle = try #require(FileHandle(forWritingAtPath: log))
        p.standardError = handle
        p.standardOutput = handle
        try p.run()
        defer {
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
            p.waitUntilExit()
        }
        for _ in 0..<400 where !FileManager.default.fileExists(atPath: socketPath) && p.isRunning { usleep(25_000) }
        #expect(FileManager.default.fileExists(atPath: socketPath), "ringbackd did not start: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
        p.terminate()
        for _ in 0..<400 where p.isRunning { usleep(25_000) }
        #expect(!p.isRunning, "ringbackd did not stop on SIGTERM")
        return try String(contentsOfFile: log, encoding: .utf8)
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }
}

/// A Prometheus text exposition read back: each sample's name, labels and value.
struct Exposition {
    struct Sample {
        var name: String
        var labels: [String: String]
        var value: Double
    }
    let samples: [Sample]

    init(_ text: String) {
        var samples: [Sample] = []
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            var rest = Substring(line)
            let name = rest.prefix { $0 != "{" && $0 != " " }
            rest = rest.dropFirst(name.count)
            var labels: [String: String] = [:]
            if rest.hasPrefix("{") {
                rest = rest.dropFirst()
                while !rest.hasPrefix("}") && !rest.isEmpty {
                    let key = rest.prefix { $0 != "=" }
                    rest = rest.dropFirst(key.count + 2)   // key="
                    var value = ""
                    while let c = rest.first, c != "\"" {
                        rest = rest.dropFirst()
                        if c == "\\", let next = rest.first {
                            value.append(next == "n" ? "\n" : next)
                            rest = rest.dropFirst()
                        } else {
                            value.append(c)
                        }
                    }
                    rest = rest.dropFirst()   // closing quote
                    if rest.hasPrefix(",") { rest = rest.dropFirst() }
                    labels[String(key)] = value
                }
                rest = rest.dropFirst()   // }
            }
            let valueText = rest.trimmingCharacters(in: .whitespaces).split(separator: " ").first.map(String.init) ?? ""
            let value = valueText == "+Inf" ? Double.infinity : Double(valueText)
            if let value { samples.append(Sample(name: String(name), labels: labels, value: value)) }
        }
        self.samples = samples
    }

    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        samples.first { $0.name == name && $0.labels == labels }?.value
    }
}
