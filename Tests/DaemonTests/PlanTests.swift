import ControlProtocol
import Foundation
import Testing
import TestSupport

/// Backup plans end to end: a real ringbackd reading a real configuration
/// file, real loop devices, `ringback plan run|list`, SIGHUP reloads, and
/// qemu-img judging the chains the plans write.
@Suite(.enabled(if: TestEnvironment.canUseLoopDevices, Comment(rawValue: TestEnvironment.loopSkipReason)),
       .serialized)
struct PlanTests {
    /// A temporary folder with a configuration file and a repository folder in it.
    final class Rig: @unchecked Sendable {
        let dir: TemporaryDirectory
        let config: String
        let repository: String
        var devices: [LoopDevice] = []

        init(devices count: Int = 1, size: UInt64 = 32 << 20) throws {
            dir = try TemporaryDirectory()
            config = dir.file("ringback.toml")
            repository = dir.file("repo")
            for i in 0..<count {
                devices.append(try LoopDevice(size: size, in: dir.path, name: "disk\(i).img", fill: .random))
            }
        }

        var device: LoopDevice { devices[0] }

        func write(_ text: String) throws {
            // Written whole and renamed, as an editor would, so a reload never reads half a file.
            try text.write(toFile: config + ".new", atomically: false, encoding: .utf8)
            guard rename(config + ".new", config) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno)!) }
        }

        /// A plan table for `devices` into this rig's repository.
        func plan(_ name: String, schedule: String, devices: [String]? = nil, extra: String = "") -> String {
            let list = (devices ?? self.devices.map(\.path)).map { "\"\($0)\"" }.joined(separator: ", ")
            return "[plan.\(name)]\ndevices = [\(list)]\nrepository = \"\(repository)\"\nschedule = \"\(schedule)\"\n\(extra)"
        }

        func start() throws -> DaemonProcess {
            try DaemonProcess(in: dir, extraArguments: ["--config", config])
        }

        /// `<repository>/<device-id>`: a loop device's id is its name (loop3).
        func folder(_ device: LoopDevice) -> String { repository + "/" + (device.path as NSString).lastPathComponent }

        func chains(_ device: LoopDevice) -> [String] {
            let folder = folder(device)
            return ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? [])
                .filter { $0.hasPrefix("chain-") }.sorted().map { folder + "/" + $0 }
        }

        func images(_ chain: String) -> [String] {
            ((try? FileManager.default.contentsOfDirectory(atPath: chain)) ?? []).filter { $0.hasSuffix(".qcow2") }.sorted()
                .map { chain + "/" + $0 }
        }
    }

    func plans(_ daemon: DaemonProcess) throws -> JSONValue {
        try QMPClient(path: daemon.socket).execute("x-query-plans")
    }

    func plan(_ daemon: DaemonProcess, _ name: String) throws -> JSONValue? {
        try plans(daemon)["plans"]?.arrayValue?.first { $0["name"]?.stringValue == name }
    }

    /// Polls `condition` until it holds; fails after a generous deadline (no timing is asserted).
    func eventually(_ what: String, within seconds: Double = 120, _ daemon: DaemonProcess,
                    _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try condition() { return }
            usleep(200_000)
        }
        Issue.record("timed out waiting for \(what); daemon log:\n\(daemon.log())")
        throw CommandError("timed out waiting for \(what)")
    }

    @Test("plan run: a full backup into a new chain, then incrementals that equal the device, also after a restart")
    func runFullThenIncremental() throws {
        let rig = try Rig()
        try rig.write(rig.plan("t", schedule: "daily 03:00", extra: "keep-incrementals = 7\nkeep-chains = 2\n"))
        let daemon = try rig.start()
        defer { daemon.stop() }

        var r = try daemon.ringback(["plan", "run", "t"])
        #expect(r.succeeded, "\(r.stdout)\(r.stderr)\n\(daemon.log())")
        #expect(r.stdout.contains("full"), "\(r.stdout)")
        let chains = rig.chains(rig.device)
        try #require(chains.count == 1, "\(chains)")
        #expect(URL(fileURLWithPath: chains[0]).lastPathComponent.range(of: #"^chain-\d{8}T\d{6}Z$"#, options: .regularExpression) != nil)
        var images = rig.images(chains[0])
        try #require(images.count == 1)
        #expect(images[0].contains("/0000-full-"))
        try QemuImg.check(images[0])
        #expect(try QemuImg.identical(images[0], rig.device.path))
        // The plan's bitmap exists, persistent, synced at the full backup.
        let qmp = try QMPSession(socket: daemon.socket)
        #expect(try qmp.bitmap(rig.device.path, "plan-t")?["persistent"]?.boolValue == true)

        try QemuIncrementalScenario.apply(QemuIncrementalScenario.setA.filter { $0.offset + UInt64($0.length) <= 32 << 20 },
                                          to: rig.device)
        #expect(try !QemuImg.identical(images[0], rig.device.path))
        r = try daemon.ringback(["plan", "run", "t"])
        #expect(r.succeeded, "\(r.stdout)\(r.stderr)\n\(daemon.log())")
        #expect(r.stdout.contains("incremental"), "\(r.stdout)")
        images = rig.images(chains[0])
        try #require(images.count == 2, "\(images)")
        #expect(images[1].contains("/0001-inc-"))
        for image in images { try QemuImg.check(image) }
        #expect(try QemuImg.identical(images[1], rig.device.path))

        let listed = try #require(try plan(daemon, "t"))
        #expect(listed["last-result"]?.stringValue == "success")
        #expect(listed["last-error"] == .null)
        #expect(listed["last-run"]?.stringValue != nil && listed["next-run"]?.stringValue?.hasSuffix("T03:00:00Z") == true)
        let lastRun = listed["last-run"]

        // A restart keeps the record and the bitmap: the next run continues the chain.
        daemon.stop()
        try daemon.start()
        let again = try #require(try plan(daemon, "t"))
        #expect(again["last-result"]?.stringValue == "success" && again["last-run"] == lastRun)
        try rig.device.write([UInt8](repeating: 0x5a, count: 1 << 20), at: 20 << 20)
        r = try daemon.ringback(["plan", "run", "t"])
        #expect(r.succeeded, "\(r.stdout)\(r.stderr)\n\(daemon.log())")
        images = rig.images(chains[0])
        #expect(images.count == 3 && images.last?.contains("/0002-inc-") == true, "\(images)")
        #expect(try QemuImg.identical(images.last!, rig.device.path))
        #expect(rig.chains(rig.device).count == 1)

        let list = try daemon.ringback(["plan", "list"])
        #expect(list.succeeded && list.stdout.contains("NAME") && list.stdout.contains("success"), "\(list.stdout)\(list.stderr)")
        let json = try JSONValue.parse(Data(try daemon.ringback(["plan", "list", "--json"]).stdout.utf8))
        let keys = Set(json.arrayValue?.first?.objectValue?.keys.map { $0 } ?? [])
        #expect(keys.isSuperset(of: ["name", "schedule", "devices", "next-run", "last-run", "last-result", "last-error",
                                     "last-duration"]))
    }

    @Test("after a crash the bitmap is inconsistent: the next run takes a full backup into a new chain")
    func crashMeansANewChain() throws {
        let rig = try Rig(size: 16 << 20)
        try rig.write(rig.plan("c", schedule: "every 1d"))
        let daemon = try rig.start()
        defer { daemon.stop() }
        var r = try daemon.ringback(["plan", "run", "c"])
        #expect(r.succeeded, "\(r.stdout)\(r.stderr)\n\(daemon.log())")
        daemon.kill()
        try rig.device.write([UInt8](repeating: 0xc3, count: 64 << 10), at: 3 << 20)
        try daemon.start()
        #expect(try QMPSession(socket: daemon.socket).bitmap(rig.device.path, "plan-c")?["inconsistent"] == .bool(true))
        r = try daemon.ringback(["plan", "run", "c"])
        #expect(r.succeeded && r.stdout.contains("full") && r.stdout.contains("is inconsistent"), "\(r.stdout)\(r.stderr)")
        let chains = rig.chains(rig.device)
        try #require(chains.count == 2, "\(chains)")
        let images = rig.images(chains[1])
        #expect(images.count == 1 && images[0].contains("/0000-full-"))
        #expect(try QemuImg.identical(images[0], rig.device.path))
        // The bitmap was made again and is consistent: the run after is an incremental.
        #expect(try QMPSession(socket: daemon.socket).bitmap(rig.device.path, "plan-c")?["inconsistent"] == .bool(false))
        r = try daemon.ringback(["plan", "run", "c"])
        #expect(r.succeeded && r.stdout.contains("incremental"), "\(r.stdout)\(r.stderr)")
        #expect(rig.images(chains[1]).count == 2)
    }

    @Test("a bitmap made by a run whose full backup did not complete is never trusted for an incremental")
    func unsyncedBitmap() throws {
        let rig = try Rig(size: 16 << 20)
        try rig.write(rig.plan("s", schedule: "every 1d"))
        let daemon = try rig.start()
        defer { daemon.stop() }
        var r = try daemon.ringback(["plan", "run", "s"])
        #expect(r.succeeded, "\(r.stdout)\(r.stderr)")
        // The bitmap goes; a write lands that only a full backup can see now.
        #expect(try daemon.ringback(["bitmap", "remove", rig.device.path, "plan-s"]).succeeded)
        try rig.device.write([UInt8](repeating: 0x77, count: 128 << 10), at: 5 << 20)
        // A slow run makes the bitmap again and starts a full backup, which a stop cuts short.
        try rig.write(rig.plan("s", schedule: "every 1d", extra: "speed-limit = \"1M\"\n"))
        kill(try #require(daemon.pid), SIGHUP)
        try eventually("the reload", within: 30, daemon) { daemon.log().contains("reloaded") }
        #expect(try daemon.ringback(["plan", "run", "s", "--no-wait"]).succeeded)
        let job = "plan-s-" + (rig.device.path as NSString).lastPathComponent
        try eventually("the slow job", within: 30, daemon) {
            try QMPSession(socket: daemon.socket).job(job)?["status"]?.stringValue == "running"
        }
        daemon.stop()
        try rig.write(rig.plan("s", schedule: "every 1d"))
        try daemon.start()
        #expect(try QMPSession(socket: daemon.socket).bitmap(rig.device.path, "plan-s")?["inconsistent"] == .bool(false))
        r = try daemon.ringback(["plan", "run", "s"])
        #expect(r.succeeded && r.stdout.contains("full") && r.stdout.contains("whose full backup did not complete"),
                "\(r.stdout)\(r.stderr)\n\(daemon.log())")
        let chains = rig.chains(rig.device)
        try #require(chains.count == 2, "\(chains)")
        #expect(try QemuImg.identical(try #require(rig.images(chains[1]).last), rig.device.path))
        // Synced now: the next run is an incremental again.
        r = try daemon.ringback(["plan", "run", "s"])
        #expect(r.succeeded && r.stdout.contains("incremental"), "\(r.stdout)\(r.stderr)")
    }

    @Test("a chain older than new-chain-every gets a new full backup in a new chain")
    func newChainEvery() throws {
        let rig = try Rig(size: 16 << 20)
        try rig.write(rig.plan("w", schedule: "every 1d", extra: "new-chain-every = \"7d\"\n"))
        let daemon = try rig.start()
        defer { daemon.stop() }
        var r = try daemon.ringback(["plan", "run", "w"])
        #expect(r.succeeded, "\(r.stdout)\(r.stderr)")
        r = try daemon.ringback(["plan", "run", "w"])
        #expect(r.succeeded && r.stdout.contains("incremental"), "\(r.stdout)\(r.stderr)")
        // Age the chain by its name (its images name their backing files relatively, so it stays whole).
        let chain = try #require(rig.chains(rig.device).first)
        let old = rig.folder(rig.device) + "/chain-20200101T000000Z"
        #expect(rename(chain, old) == 0)
        r = try daemon.ringback(["plan", "run", "w"])
        #expect(r.succeeded && r.stdout.contains("older than new-chain-every (7d)"), "\(r.stdout)\(r.stderr)")
        let chains = rig.chains(rig.device)
        #expect(chains.count == 2 && chains[0] == old, "\(chains)")
        #expect(try QemuImg.identical(try #require(rig.images(chains[1]).first), rig.device.path))
        #expect(try QemuImg.identical(try #require(rig.images(old).last), rig.device.path))
    }

    @Test("a raw plan: every run a full sparse raw image in a chain of its own")
    func rawPlan() throws {
        let rig = try Rig(size: 16 << 20)
        try rig.write(rig.plan("r", schedule: "every 1d", extra: "format = \"raw\"\n"))
        let daemon = try rig.start()
        defer { daemon.stop() }
        for _ in 0..<2 {
            let r = try daemon.ringback(["plan", "run", "r"])
            #expect(r.succeeded && r.stdout.contains("full"), "\(r.stdout)\(r.stderr)\n\(daemon.log())")
        }
        let chains = rig.chains(rig.device)
        try #require(chains.count == 2, "\(chains)")
        for chain in chains {
            let files = try FileManager.default.contentsOfDirectory(atPath: chain).filter { $0.hasSuffix(".raw") }
            try #require(files.count == 1, "\(files)")
            #expect(try QemuImg.identical(chain + "/" + files[0], rig.device.path, formatA: "raw", formatB: "raw"))
        }
        // No bitmap: a raw plan needs none.
        #expect(try QMPSession(socket: daemon.socket).bitmap(rig.device.path, "plan-r") == nil)
    }

    @Test("a plan of two devices: one grouped transaction, a chain per device, each equal to its device")
    func twoDevicesGrouped() throws {
        let rig = try Rig(devices: 2, size: 16 << 20)
        try rig.write(rig.plan("pair", schedule: "every 1d"))
        let daemon = try rig.start()
        defer { daemon.stop() }
        for step in 0..<2 {
            for (i, d) in rig.devices.enumerated() {
                try d.write([UInt8](repeating: UInt8(17 + i + step), count: 256 << 10), at: UInt64(step + 1) << 20)
            }
            let r = try daemon.ringback(["plan", "run", "pair"])
            #expect(r.succeeded, "\(r.stdout)\(r.stderr)\n\(daemon.log())")
        }
        for d in rig.devices {
            let chains = rig.chains(d)
            try #require(chains.count == 1, "\(d.path): \(chains)")
            let images = rig.images(chains[0])
            #expect(images.count == 2, "\(images)")
            for image in images { try QemuImg.check(image) }
            #expect(try QemuImg.identical(images.last!, d.path))
        }
    }

    @Test("a scheduled plan (every 2s) runs on its own")
    func scheduledRun() throws {
        let rig = try Rig(size: 16 << 20)
        try rig.write(rig.plan("often", schedule: "every 2s"))
        let daemon = try rig.start()
        defer { daemon.stop() }
        var firstRun: JSONValue?
        try eventually("a first scheduled run", daemon) {
            let p = try plan(daemon, "often")
            firstRun = p?["last-run"]
            return p?["last-result"]?.stringValue == "success"
        }
        try eventually("a second scheduled run", daemon) {
            let p = try plan(daemon, "often")
            return p?["last-result"]?.stringValue == "success" && p?["last-run"] != firstRun
        }
        daemon.stop()
        let chains = rig.chains(rig.device)
        try #require(chains.count == 1, "\(chains)")
        let images = rig.images(chains[0])
        #expect(images.count >= 2 && images[1].contains("-inc-"), "\(images)")
        for image in images { try QemuImg.check(image) }
        #expect(try QemuImg.identical(images.last!, rig.device.path))
        #expect(daemon.log().contains("plan 'often': run succeeded"))
    }

    @Test("SIGHUP with a broken config: the old plans keep running, the error names the line and key")
    func reloadBrokenConfig() throws {
        let rig = try Rig(size: 16 << 20)
        try rig.write(rig.plan("a", schedule: "every 1d"))
        let daemon = try rig.start()
        defer { daemon.stop() }
        #expect(try plans(daemon)["config-error"] == .null)

        try rig.write(rig.plan("a", schedule: "every 1d", extra: "keep-chains = \"two\"\n") + "\n[plan.b]\ndevices = []\n")
        kill(try #require(daemon.pid), SIGHUP)
        var error = ""
        try eventually("the reload's error", within: 30, daemon) {
            error = try plans(daemon)["config-error"]?.stringValue ?? ""
            return !error.isEmpty
        }
        #expect(error.contains("\(rig.config):5: plan.a.keep-chains: expected an integer ≥ 1, got \"two\""), "\(error)")
        #expect(error.contains("\(rig.config):8: plan.b.devices:"), "\(error)")
        #expect(try plans(daemon)["plans"]?.arrayValue?.compactMap { $0["name"]?.stringValue } == ["a"])
        #expect(daemon.log().contains(":5: plan.a.keep-chains:"), "\(daemon.log())")

        let list = try daemon.ringback(["plan", "list"])
        #expect(list.succeeded && list.stdout.contains("every 1d"), "\(list.stdout)")
        #expect(list.stderr.contains("plan.a.keep-chains"), "\(list.stderr)")
        // The old plan still runs.
        let r = try daemon.ringback(["plan", "run", "a"])
        #expect(r.succeeded, "\(r.stdout)\(r.stderr)\n\(daemon.log())")
        #expect(rig.chains(rig.device).count == 1)
    }

    @Test("SIGHUP with a changed config: the new plans replace the old ones")
    func reloadChangedConfig() throws {
        let rig = try Rig(size: 16 << 20)
        try rig.write(rig.plan("a", schedule: "every 1d"))
        let daemon = try rig.start()
        defer { daemon.stop() }
        #expect(try plan(daemon, "a") != nil)

        try rig.write(rig.plan("b", schedule: "Mon..Fri 01:00", extra: "bitmap = \"b-bits\"\n"))
        kill(try #require(daemon.pid), SIGHUP)
        try eventually("the reload", within: 30, daemon) {
            try plans(daemon)["plans"]?.arrayValue?.compactMap { $0["name"]?.stringValue } == ["b"]
        }
        #expect(try plans(daemon)["config-error"] == .null)
        #expect(try plan(daemon, "b")?["schedule"]?.stringValue == "Mon..Fri 01:00")
        #expect(try plan(daemon, "b")?["next-run"]?.stringValue?.hasSuffix("T01:00:00Z") == true)

        let gone = try daemon.ringback(["plan", "run", "a"])
        #expect(!gone.succeeded && gone.stderr.contains("plan 'a' is not in the configuration"), "\(gone.stderr)")
        let r = try daemon.ringback(["plan", "run", "b"])
        #expect(r.succeeded, "\(r.stdout)\(r.stderr)\n\(daemon.log())")
        #expect(try QMPSession(socket: daemon.socket).bitmap(rig.device.path, "b-bits") != nil)
    }

    @Test("a plan naming a missing device fails with a clear error, recorded as failed across a restart")
    func missingDevice() throws {
        let rig = try Rig(size: 16 << 20)
        let missing = "/dev/ringback-test-no-such-device"
        try rig.write(rig.plan("broken", schedule: "every 1d", devices: [missing]))
        let daemon = try rig.start()
        defer { daemon.stop() }
        let r = try daemon.ringback(["plan", "run", "broken"])
        #expect(!r.succeeded)
        #expect(r.stderr.contains("plan 'broken' failed") && r.stderr.contains("cannot back up \(missing): the device does not exist"),
                "\(r.stderr)")
        var p = try #require(try plan(daemon, "broken"))
        #expect(p["last-result"]?.stringValue == "failed")
        #expect(p["last-error"]?.stringValue?.contains(missing) == true)
        #expect(!FileManager.default.fileExists(atPath: rig.repository + "/ringback-test-no-such-device"))

        daemon.stop()
        try daemon.start()
        p = try #require(try plan(daemon, "broken"))
        #expect(p["last-result"]?.stringValue == "failed" && p["last-error"]?.stringValue?.contains(missing) == true)
    }

    @Test("a plan never runs twice at once; a run cut short by a stop is recorded as failed, and the next one starts over")
    func onceAtATime() throws {
        let rig = try Rig(size: 16 << 20)
        // 2 MiB/s on 16 MiB: a run that lasts long enough to be caught running.
        try rig.write(rig.plan("slow", schedule: "every 1d", extra: "speed-limit = \"2M\"\n"))
        let daemon = try rig.start()
        defer { daemon.stop() }
        let started = try daemon.ringback(["plan", "run", "slow", "--no-wait"])
        #expect(started.succeeded, "\(started.stderr)")
        let again = try daemon.ringback(["plan", "run", "slow"])
        #expect(!again.succeeded && again.stderr.contains("plan 'slow' is already running"), "\(again.stderr)")
        #expect(try plan(daemon, "slow")?["running"] == .bool(true))
        #expect(try daemon.ringback(["plan", "list"]).stdout.contains("running"))

        daemon.stop()
        try daemon.start()
        let p = try #require(try plan(daemon, "slow"))
        #expect(p["last-result"]?.stringValue == "failed", "\(p)")
        #expect(p["last-error"]?.stringValue?.contains("cancelled") == true, "\(p)")
        #expect(rig.chains(rig.device).isEmpty, "the chain folder of a full backup that did not complete is removed")

        try rig.write(rig.plan("slow", schedule: "every 1d"))
        kill(try #require(daemon.pid), SIGHUP)
        try eventually("the reload", within: 30, daemon) { daemon.log().contains("reloaded") }
        let r = try daemon.ringback(["plan", "run", "slow"])
        #expect(r.succeeded && r.stdout.contains("full"), "\(r.stdout)\(r.stderr)\n\(daemon.log())")
        let chains = rig.chains(rig.device)
        try #require(chains.count == 1)
        #expect(try QemuImg.identical(try #require(rig.images(chains[0]).last), rig.device.path))
    }

    @Test("a missing --config file stops the daemon at start; a missing default file means no plans")
    func missingConfigFile() throws {
        let dir = try TemporaryDirectory()
        #expect(throws: Shell.Failure.self) {
            _ = try DaemonProcess(in: dir, extraArguments: ["--config", dir.file("absent.toml")])
        }
        let log = (try? String(contentsOfFile: dir.file("ringbackd.log"), encoding: .utf8)) ?? ""
        #expect(log.contains("cannot read the config file \(dir.file("absent.toml")): No such file or directory"), "\(log)")

        // Without --config: the default path, which is absent on a machine without the package.
        guard !FileManager.default.fileExists(atPath: "/etc/ringback/ringback.toml") else { return }
        let daemon = try DaemonProcess(in: dir, readsHostConfig: true)
        defer { daemon.stop() }
        let reply = try plans(daemon)
        #expect(reply["config"]?.stringValue == "/etc/ringback/ringback.toml")
        #expect(reply["plans"] == .array([]) && reply["config-error"] == .null)
        #expect(try daemon.ringback(["plan", "list"]).stdout.contains("no plans"))
    }
}
