import Foundation
import Testing
@testable import Quiesce

/// The freeze order and the hooks, without a daemon.
@Suite struct FreezePlanTests {
    @Test("nested mounts are frozen before the mounts they sit on")
    func nestedFirst() {
        let order = FreezePlan.order(["/srv", "/srv/db/wal", "/", "/srv/db", "/home"])
        #expect(order == ["/srv/db/wal", "/srv/db", "/srv", "/home", "/"])
        // Thawing runs the other way: every parent is thawed after its children.
        for (i, m) in order.enumerated() {
            for later in order[(i + 1)...] where m.hasPrefix(later == "/" ? "/" : later + "/") {
                #expect(Bool(true), "\(m) before its parent \(later)")
            }
            for earlier in order[..<i] where earlier != m {
                #expect(!m.hasPrefix(earlier == "/" ? "/" : earlier + "/") || earlier == "/",
                        "\(m) comes after \(earlier), which is inside it")
            }
        }
    }

    @Test("a hook that fails, overruns, or succeeds; its environment")
    func hooks() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hooks-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = dir + "/log"
        func hook(_ name: String, _ body: String) throws {
            try "#!/bin/sh\n\(body)\n".write(toFile: dir + "/" + name, atomically: true, encoding: .utf8)
            chmod(dir + "/" + name, 0o755)
        }
        try hook("10-env", "echo \"$1 $RINGBACK_PHASE $RINGBACK_DEVICES\" >> \(log)")
        try "not executable".write(toFile: dir + "/20-readme", atomically: true, encoding: .utf8)
        let hooks = Hooks(directory: dir, timeout: 1)
        try hooks.run(.preFreeze, environment: ["RINGBACK_DEVICES": "/dev/sdx"])
        #expect(try String(contentsOfFile: log, encoding: .utf8) == "pre-freeze pre-freeze /dev/sdx\n")
        #expect(hooks.executables.map { ($0 as NSString).lastPathComponent } == ["10-env"])

        try hook("30-fail", "echo broken >&2; exit 4")
        #expect(throws: HookError.self) { try hooks.run(.frozen, environment: [:]) }
        do { try hooks.run(.frozen, environment: [:]) } catch {
            #expect("\(error)" == "hook \(dir)/30-fail (frozen) exited with status 4: broken")
        }
        unlink(dir + "/30-fail")
        try hook("40-slow", "sleep 30 & echo $! > \(dir)/sleeper; wait")
        do { try hooks.run(.postThaw, environment: [:]); Issue.record("a hook past its timeout must fail") } catch {
            #expect("\(error)" == "hook \(dir)/40-slow (post-thaw) did not finish within 1 s and was killed")
        }
        // What the hook started is killed with it.
        let sleeper = Int32((try String(contentsOfFile: dir + "/sleeper", encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        #expect(sleeper > 0)
        var gone = false
        for _ in 0..<200 where !gone {
            let stat = (try? String(contentsOfFile: "/proc/\(sleeper)/stat", encoding: .utf8)) ?? ""
            gone = stat.isEmpty || stat.contains(") Z ")
            if !gone { usleep(10_000) }
        }
        #expect(gone, "the hook's child \(sleeper) outlived the kill")
    }

    @Test("an empty plan spawns nothing and thaws at once")
    func emptyPlan() throws {
        let hold = try FreezeHold(plan: FreezePlan(mountPoints: []), timeout: 5, executable: "/nonexistent", arguments: [])
        #expect(hold.remaining() == 0)
        #expect(hold.thaw() == .requested(seconds: 0))
    }
}
