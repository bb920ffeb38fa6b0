import Foundation
import Testing
import TestSupport

/// The host side of the LVM tests: boots the VM of scripts/lvm-vm.sh once and
/// runs in it the guest suites (`GuestTests` and the suites nested in it) of
/// this same, host-built test bundle; the guest's output streams into this
/// test's output, each line marked `lvm-vm |`.
///
/// It passes when the guest's run passed and ran at least one test; a guest
/// that ran none, skipped one, or a VM that died or timed out fails it, with
/// the tail of the console in the message.
@Suite(.enabled(if: LVMEnvironment.hostSuiteEnabled, Comment(rawValue: LVMEnvironment.hostSkipReason)))
struct LVMVirtualMachineTests {
    /// What `--filter` selects in the guest: the guest suites and nothing else.
    static let guestFilter = "LVMTests.GuestTests/"

    /// Seconds before the VM is killed (LVMVM_TIMEOUT); $RINGBACK_LVMVM_TIMEOUT overrides.
    static var vmTimeout: Int {
        ProcessInfo.processInfo.environment["RINGBACK_LVMVM_TIMEOUT"].flatMap(Int.init) ?? 1800
    }

    @Test(.timeLimit(.minutes(45)))
    func guestSuitesPassInTheVM() throws {
        let bundle = try Self.testBundle()
        let shared = try TemporaryDirectory(prefix: "ringback-lvmvm-out")
        let started = Date()
        let run = try GuestRun(
            command: [bundle, "--testing-library", "swift-testing", "--filter", Self.guestFilter],
            shared: shared.path, timeout: Self.vmTimeout)
        let seconds = Date().timeIntervalSince(started)
        let summary = GuestSummary(parsing: run.lines)
        let verdict = summary.map { "ran \($0.tests) guest tests (\($0.passed ? "passed" : "failed"))" } ?? "finished no guest test run"
        print("lvm-vm: the VM \(verdict) in \(String(format: "%.1f", seconds)) s (boot included)")

        let tail = run.lines.suffix(40).joined(separator: "\n")
        guard let summary else {
            Issue.record("the guest printed no Swift Testing summary (the VM died, timed out or the bundle did not start); lvm-vm.sh exited \(run.status). Console tail:\n\(tail)")
            return
        }
        #expect(run.status == 0, "the guest run exited \(run.status). Console tail:\n\(tail)")
        #expect(summary.passed, "the guest run failed. Console tail:\n\(tail)")
        #expect(summary.tests > 0, "the guest ran no tests: --filter \(Self.guestFilter) matched nothing. Console tail:\n\(tail)")
        #expect(summary.skipped.isEmpty, "guest tests were skipped in the VM: \(summary.skipped.joined(separator: "; "))")
    }

    /// The test bundle this process runs from (.build*/debug/ringbackPackageTests.xctest):
    /// on Linux the bundle is the executable itself.
    static func testBundle() throws -> String {
        let exe = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        guard exe.hasSuffix(".xctest") else {
            throw GuestError("this test runs from \(exe), not from a .xctest bundle; run it with swift test")
        }
        return exe
    }
}

/// One run of scripts/lvm-vm.sh, its output streamed line by line as it comes.
struct GuestRun {
    let status: Int32
    let lines: [String]

    init(command: [String], shared: String, timeout: Int) throws {
        let p = Process()
        // Foundation starts the child in a process group of its own (pgid =
        // pid); the watchdog below kills that group, qemu included (lvm-vm.sh
        // keeps qemu in its group).
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = [LVMEnvironment.vmScript] + command
        var env = ProcessInfo.processInfo.environment
        env["LVMVM_OUT"] = shared
        env["LVMVM_TIMEOUT"] = String(timeout)
        env["LVMVM_ENV"] = "RINGBACK_BIN"
        p.environment = env
        p.currentDirectoryURL = URL(fileURLWithPath: LVMEnvironment.packageRoot)
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let pid = p.processIdentifier

        // lvm-vm.sh kills the VM after `timeout` s; this is for a script that hangs.
        let watchdog = DispatchWorkItem { kill(-pid, SIGKILL) }
        DispatchQueue.global().asyncAfter(deadline: .now() + .seconds(timeout + 120), execute: watchdog)
        defer { watchdog.cancel() }

        var lines: [String] = []
        var pending = Data()
        let reader = pipe.fileHandleForReading
        while true {
            let chunk = reader.availableData
            if chunk.isEmpty { break }
            pending.append(chunk)
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: pending[pending.startIndex..<newline], as: UTF8.self)
                pending.removeSubrange(pending.startIndex...newline)
                print("lvm-vm | \(line)")
                lines.append(line)
            }
        }
        if !pending.isEmpty {
            let line = String(decoding: pending, as: UTF8.self)
            print("lvm-vm | \(line)")
            lines.append(line)
        }
        p.waitUntilExit()
        status = p.terminationStatus
        self.lines = lines
    }
}

/// What the guest's Swift Testing run said at its end: "Test run with N tests
/// [in M suites] passed|failed after ...", and which tests it skipped.
struct GuestSummary: Equatable {
    let tests: Int
    let passed: Bool
    let skipped: [String]

    init(tests: Int, passed: Bool, skipped: [String]) {
        self.tests = tests
        self.passed = passed
        self.skipped = skipped
    }

    init?(parsing lines: [String]) {
        var found: (Int, Bool)?
        var skipped: [String] = []
        for raw in lines {
            let line = Self.withoutEscapes(raw)
            if let r = line.range(of: #"Test run with [0-9]+ tests?"#, options: .regularExpression) {
                let count = Int(line[r].split(separator: " ")[3]) ?? 0
                let rest = line[r.upperBound...]
                found = (count, rest.contains(" passed after "))
            } else if let r = line.range(of: #"(Test|Suite) .* skipped"#, options: .regularExpression),
                      line[..<r.lowerBound].hasSuffix("\u{279C} ") {
                skipped.append(String(line[r]))
            }
        }
        guard let found else { return nil }
        (tests, passed) = found
        self.skipped = skipped
    }

    /// The line without ANSI colour sequences.
    static func withoutEscapes(_ s: String) -> String {
        s.replacingOccurrences(of: "\u{1B}\\[[0-9;]*m", with: "", options: .regularExpression)
    }
}
