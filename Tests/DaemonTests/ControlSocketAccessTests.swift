import ControlProtocol
import Foundation
import Testing
import TestSupport

/// Who may use the control socket (DESIGN §12): root, or members of the group
/// given with --group. Two fences stand in the way of anyone else: the socket
/// file's mode (connect() fails with EACCES) and the daemon's SO_PEERCRED
/// check (connected, but closed without a greeting). Each is tested on its
/// own with real unprivileged users that run Tests/tools/qmp_probe.py.
@Suite(.enabled(if: TestEnvironment.canUseLoopDevices, Comment(rawValue: "needs root to create users and run clients as them")))
struct ControlSocketAccessTests {
    static let probeScript = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("tools/qmp_probe.py").path
    static let nobody = ["--reuid=nobody", "--regid=nogroup", "--clear-groups"]

    /// Runs the probe with setpriv's identity options (none: as root). The
    /// script comes on standard input, so the user needs no access to the tree.
    func probe(_ socket: String, as identity: [String]) throws -> JSONValue {
        let script = try String(contentsOfFile: Self.probeScript, encoding: .utf8)
        let command = (identity.isEmpty ? [] : ["setpriv"] + identity) + ["/usr/bin/python3", "-I", "-", socket]
        let r = try Shell.run(command, stdin: script)
        guard r.succeeded else { throw CommandError("\(command.joined(separator: " ")) exited \(r.status): \(r.stderr)") }
        return try JSONValue.parse(Data(r.stdout.utf8))
    }

    /// Greeted, negotiated, and query-version answered.
    func expectServed(_ outcome: JSONValue, _ who: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(outcome["connect"] == .string("ok"), "\(who): \(outcome)", sourceLocation: sourceLocation)
        #expect(outcome["greeting"]?["QMP"]?["capabilities"] == .array([]), "\(who): \(outcome)", sourceLocation: sourceLocation)
        #expect(outcome["capabilities"] == .object(["return": .object([:]), "id": .string("capabilities")]),
                "\(who): \(outcome)", sourceLocation: sourceLocation)
        #expect(outcome["version"]?["return"]?["package"] == .string("ringback 0.1.0"), "\(who): \(outcome)",
                sourceLocation: sourceLocation)
    }

    /// Connected, but closed by the daemon without a greeting (SO_PEERCRED);
    /// at most an error came first.
    func expectTurnedAway(_ outcome: JSONValue, _ who: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(outcome["connect"] == .string("ok"), "\(who): \(outcome)", sourceLocation: sourceLocation)
        #expect(outcome["greeting"] == .null, "\(who) was greeted: \(outcome)", sourceLocation: sourceLocation)
        #expect(outcome["closed"] == .bool(true), "\(who): \(outcome)", sourceLocation: sourceLocation)
        for message in outcome["before_close"]?.arrayValue ?? [] {
            #expect(message["error"]?["desc"]?.stringValue?.contains("permission denied") == true,
                    "\(who) got \(message)", sourceLocation: sourceLocation)
        }
    }

    func socketStat(_ path: String) -> stat {
        var st = stat()
        lstat(path, &st)
        return st
    }

    /// A daemon whose folder others may pass through, so that only the socket's
    /// own mode and the daemon decide.
    func daemon(in dir: TemporaryDirectory, _ arguments: [String] = []) throws -> DaemonProcess {
        chmod(dir.path, 0o711)
        return try DaemonProcess(in: dir, extraArguments: arguments)
    }

    @Test func withoutAGroupOnlyRootGetsIn() throws {
        let dir = try TemporaryDirectory()
        let daemon = try daemon(in: dir)
        defer { daemon.stop() }
        let st = socketStat(daemon.socket)
        #expect(st.st_mode & S_IFMT == S_IFSOCK)
        #expect(st.st_mode & 0o7777 == 0o600, "mode \(String(st.st_mode & 0o7777, radix: 8))")
        #expect(st.st_uid == 0)

        expectServed(try probe(daemon.socket, as: []), "root")
        // The file mode refuses nobody before the daemon sees it.
        #expect(try probe(daemon.socket, as: Self.nobody)["connect"] == .string("EACCES"))
        // Past the file mode (opened up here on purpose), the daemon refuses it.
        chmod(daemon.socket, 0o666)
        expectTurnedAway(try probe(daemon.socket, as: Self.nobody), "nobody")
        expectServed(try probe(daemon.socket, as: []), "root after the refusal")
    }

    @Test func membersOfTheConfiguredGroupGetIn() throws {
        let accounts = try TestAccounts()
        defer { accounts.remove() }
        let dir = try TemporaryDirectory()
        let daemon = try daemon(in: dir, ["--group", accounts.group])
        defer { daemon.stop() }
        let st = socketStat(daemon.socket)
        #expect(st.st_mode & 0o7777 == 0o660, "mode \(String(st.st_mode & 0o7777, radix: 8))")
        #expect(st.st_uid == 0)
        #expect(st.st_gid == accounts.gid)

        // A member as login gives it: the group is one of its supplementary groups.
        expectServed(try probe(daemon.socket, as: ["--reuid=\(accounts.user)", "--regid=nogroup", "--init-groups"]),
                     "member (supplementary group)")
        // The group as the primary group, nothing else.
        expectServed(try probe(daemon.socket, as: ["--reuid=\(accounts.user)", "--regid=\(accounts.group)", "--clear-groups"]),
                     "member (primary group)")
        // Among more supplementary groups than the daemon first asks the kernel for.
        let many = (60_000..<60_100).map(String.init).joined(separator: ",") + ",\(accounts.gid)"
        expectServed(try probe(daemon.socket, as: ["--reuid=\(accounts.user)", "--regid=nogroup", "--groups=\(many)"]),
                     "member (101st supplementary group)")
        // The same user without the group is no member.
        #expect(try probe(daemon.socket, as: ["--reuid=\(accounts.user)", "--regid=nogroup", "--clear-groups"])["connect"]
                == .string("EACCES"))
        #expect(try probe(daemon.socket, as: Self.nobody)["connect"] == .string("EACCES"))
        chmod(daemon.socket, 0o666)
        expectTurnedAway(try probe(daemon.socket, as: Self.nobody), "nobody")
        expectTurnedAway(try probe(daemon.socket, as: ["--reuid=\(accounts.user)", "--regid=nogroup", "--clear-groups"]),
                         "the member without its group")
    }
}

/// A system group and a user in it (supplementary; primary group nogroup),
/// made for one test and deleted by `remove()` or when released. Names carry
/// the test process's pid, so accounts left by a killed run are recognised
/// and deleted by the next.
final class TestAccounts: @unchecked Sendable {
    static let prefix = "rbqmp"
    nonisolated(unsafe) static var made = 0
    let user: String
    let group: String
    let gid: gid_t
    private var removed = false

    init() throws {
        Self.removeAbandoned()
        Self.made += 1
        let tag = "\(getpid())x\(Self.made)"
        group = "\(Self.prefix)g\(tag)"
        user = "\(Self.prefix)u\(tag)"
        try Shell.check(["groupadd", "--system", group])
        do {
            try Shell.check(["useradd", "--system", "--no-create-home", "--no-user-group", "--gid", "nogroup",
                             "--groups", group, "--shell", "/usr/sbin/nologin", user])
        } catch {
            _ = try? Shell.run(["groupdel", group])
            throw error
        }
        guard let g = getgrnam(group) else { throw CommandError("group \(group) was not created") }
        gid = g.pointee.gr_gid
    }

    func remove() {
        guard !removed else { return }
        removed = true
        _ = try? Shell.run(["userdel", user])
        _ = try? Shell.run(["groupdel", group])
    }

    deinit { remove() }

    /// Deletes accounts of this kind whose test process is gone.
    static func removeAbandoned() {
        for (file, delete) in [("/etc/passwd", "userdel"), ("/etc/group", "groupdel")] {
            let names = ((try? String(contentsOfFile: file, encoding: .utf8)) ?? "").split(separator: "\n")
                .compactMap { $0.split(separator: ":").first.map(String.init) }
            for name in names where name.hasPrefix(prefix) {
                let pid = name.dropFirst(prefix.count + 1).prefix { $0.isNumber }
                if let pid = Int32(pid), kill(pid, 0) != 0 && errno == ESRCH {
                    _ = try? Shell.run([delete, name])
                }
            }
        }
    }
}
