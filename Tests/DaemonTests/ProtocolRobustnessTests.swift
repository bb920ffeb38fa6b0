import ControlProtocol
import Foundation
import Testing
import TestSupport

/// Client input never takes ringbackd down (DESIGN §12): Tests/tools/qmp_fuzz.py
/// sends at least 10,000 malformed, truncated, wrongly typed and oversized
/// messages to a real daemon and checks every answer, a long-lived second
/// client, the daemon's memory, threads and descriptors.
@Suite(.enabled(if: TestEnvironment.canUseLoopDevices, Comment(rawValue: TestEnvironment.loopSkipReason)))
struct ProtocolRobustnessTests {
    static let fuzzScript = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("tools/qmp_fuzz.py").path

    /// RINGBACK_FUZZ_SEED repeats a run; RINGBACK_FUZZ_EXCLUDE (comma-separated
    /// categories) looks past a known failure when diagnosing.
    @Test func fuzzedMessagesGetAnErrorOrCostTheirConnection() throws {
        let environment = ProcessInfo.processInfo.environment
        let seed = environment["RINGBACK_FUZZ_SEED"].flatMap(UInt32.init) ?? UInt32.random(in: 0...UInt32.max)
        let excluded = (environment["RINGBACK_FUZZ_EXCLUDE"] ?? "").split(separator: ",").flatMap { ["--exclude", String($0)] }
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 16 << 20, in: dir.path)
        let daemon = try DaemonProcess(in: dir)
        defer {
            daemon.kill()
            DaemonProcess.removeTracefsInstance(of: device.path)
        }
        let pid = try #require(daemon.pid)
        let slackMiB = 64
        print("ProtocolRobustnessTests: fuzz seed \(seed) (RINGBACK_FUZZ_SEED=\(seed) repeats it)")
        let run = try Shell.run(["python3", Self.fuzzScript, "--socket", daemon.socket, "--pid", String(pid),
                                 "--node", device.path, "--seed", String(seed), "--count", "10000",
                                 "--rss-slack-mib", String(slackMiB)] + excluded)
        print(run.stdout.split(separator: "\n").filter { !$0.hasPrefix("RESULT ") }.joined(separator: "\n"))
        let log = daemon.log().suffix(4000)
        #expect(run.succeeded, "seed \(seed): \(run.stderr)\ndaemon log:\n\(log)")

        // The script checks all of this itself; the figures are asserted here
        // too, so that a script that stopped checking would not pass.
        let resultLine = try #require(run.stdout.split(separator: "\n").last { $0.hasPrefix("RESULT ") })
        let result = try JSONValue.parse(Data(resultLine.dropFirst("RESULT ".count).utf8))
        #expect(result["seed"]?.intValue == Int64(seed))
        #expect(result["alive"] == .bool(true), "the daemon died (seed \(seed)):\n\(log)")
        #expect((result["messages"]?.intValue ?? 0) >= 10_000)
        #expect(result["by_category"]?.objectValue?.count ?? 0 >= 15)
        let before = try #require(result["rss_before_kib"]?.intValue, "no RSS figures: \(resultLine)")
        let peak = try #require(result["rss_peak_kib"]?.intValue)
        #expect(peak <= before + Int64(slackMiB) * 1024, "peak RSS \(peak) KiB, started at \(before) KiB")
        #expect((result["rss_after_kib"]?.intValue ?? .max) <= before + Int64(slackMiB) * 1024)
        #expect((result["probe_answers"]?.intValue ?? 0) >= 40, "the long-lived client was asked every 250 messages")

        // Still serving new clients, and still stops cleanly.
        #expect(try QMPClient(path: daemon.socket).execute("query-version")["package"] == .string("ringback 0.1.0"))
        #expect(daemon.pid == pid)
        daemon.stop()
        #expect(daemon.log().contains("ringbackd: stopped"))
    }
}
