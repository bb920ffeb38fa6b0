import ControlProtocol
import Foundation
import Testing
import TestSupport

/// QEMU's bitmap sync-mode matrix (iotests 257) on a 64 MiB device with 64 KiB
/// granularity: sync `bitmap` and `full` × bitmap-mode `never`, `on-success`,
/// `always` × {no failure, cancel while pending, EIO part-way}. The bitmap's
/// count after the backup and after a later write must follow QEMU's rule:
/// synced = (success or `always`) and not `never`; a failed `always` job
/// abdicates and merges back the granules it never copied.
@Suite(.enabled(if: TestEnvironment.canUseLoopDevices, Comment(rawValue: TestEnvironment.loopSkipReason)),
       .serialized)
struct SyncModeMatrixTests {
    enum Failure: String, CaseIterable, Sendable { case none, cancelWhilePending, eioPartWay }
    struct Case: Sendable, CustomTestStringConvertible {
        let sync: String, mode: String, failure: Failure
        var testDescription: String { "sync=\(sync) bitmap-mode=\(mode) failure=\(failure.rawValue)" }
    }
    static let cases: [Case] = ["bitmap", "full"].flatMap { sync in
        ["never", "on-success", "always"].flatMap { mode in Failure.allCases.map { Case(sync: sync, mode: mode, failure: $0) } }
    }

    static let granularity: UInt64 = 64 << 10
    static let size: UInt64 = 64 << 20
    /// Inside set A's write at 16 MiB, so both syncs read it.
    static let faultOffset: UInt64 = (16 << 20) + (128 << 10)
    static let setC: [QemuIncrementalScenario.Write] = [(0x11, 48 << 20, 64 << 10), (0x12, 0, 4096)]

    static func granules(_ writes: [QemuIncrementalScenario.Write]) -> Set<UInt64> {
        var g = Set<UInt64>()
        for w in writes { for i in (w.offset / granularity)...((w.offset + UInt64(w.length) - 1) / granularity) { g.insert(i) } }
        return g
    }

    /// QEMU's answer for the bitmap after the backup (set B written while the job
    /// was pending, or after it failed).
    static func expected(_ c: Case) -> Set<UInt64> {
        let a = granules(QemuIncrementalScenario.setA), b = granules(QemuIncrementalScenario.setB)
        let succeeded = c.failure == .none
        let synced = (succeeded || c.mode == "always") && c.mode != "never"
        guard synced else { return a.union(b) }
        guard !succeeded else { return b }
        // A failed `always`: what the job never copied comes back. Copying runs
        // one 64 KiB chunk at a time in device order, so everything before the
        // failing chunk was copied and nothing from it on.
        let planned = c.sync == "full" ? Set(0..<(size / granularity)) : a
        let uncopied = c.failure == .eioPartWay ? planned.filter { $0 * granularity >= faultOffset } : []
        return b.union(uncopied)
    }

    static func write(_ writes: [QemuIncrementalScenario.Write], to device: FaultyLoopDevice) throws {
        for w in writes { try device.write([UInt8](repeating: w.pattern, count: w.length), at: w.offset) }
    }

    @Test(arguments: cases)
    func syncModeMatrix(_ c: Case) throws {
        let dir = try TemporaryDirectory()
        let device = try FaultyLoopDevice(size: Self.size, fill: .random)
        defer { device.detach() }
        let daemon = try DaemonProcess(in: dir)
        let qmp = try QMPSession(socket: daemon.socket)
        let chain = dir.file("chain")
        try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)
        try qmp.execute("drive-backup", qmpArgs(["device": device.path, "target": chain, "sync": "full", "job-id": "base"]))
        try qmp.waitForEnd(of: "base")
        try qmp.execute("block-dirty-bitmap-add", qmpArgs(["node": device.path, "name": "b0", "granularity": Int(Self.granularity)]))
        try Self.write(QemuIncrementalScenario.setA, to: device)
        #expect(try qmp.count(device.path, "b0") == UInt64(Self.granules(QemuIncrementalScenario.setA).count) * Self.granularity)
        let imagesBefore = try FileManager.default.contentsOfDirectory(atPath: chain).filter { $0.hasSuffix(".qcow2") }.count

        let args = qmpArgs(["device": device.path, "target": chain, "sync": c.sync, "bitmap": "b0", "bitmap-mode": c.mode,
                            "job-id": "m", "auto-finalize": c.failure == .eioPartWay,
                            "x-perf": ["max-workers": 1, "max-chunk": Int(Self.granularity)]])
        if c.sync == "full" && c.mode == "never" {
            #expect(try qmp.error("drive-backup", args)
                    == "Bitmap sync mode 'never' has no meaningful effect when combined with sync mode 'full'")
            return
        }
        if c.failure == .eioPartWay { try device.failReads(offset: Self.faultOffset, length: 64 << 10) }
        try qmp.execute("drive-backup", args)
        let end: JSONValue
        switch c.failure {
        case .none, .cancelWhilePending:
            try qmp.waitFor("BLOCK_JOB_PENDING") { $0["id"]?.stringValue == "m" }
            // Writes while the job waits in pending land in the successor.
            try Self.write(QemuIncrementalScenario.setB, to: device)
            _ = try qmp.count(device.path, "b0")
            try qmp.execute(c.failure == .none ? "job-finalize" : "job-cancel", qmpArgs(["id": "m"]))
            end = try qmp.waitForEnd(of: "m")
            #expect(end["event"]?.stringValue == (c.failure == .none ? "BLOCK_JOB_COMPLETED" : "BLOCK_JOB_CANCELLED"))
        case .eioPartWay:
            end = try qmp.waitForEnd(of: "m")
            #expect(end["data"]?["error"] != nil, "\(end)")
            #expect(try device.injectedFailures.reads > 0)
            try device.clearFaults()
            try Self.write(QemuIncrementalScenario.setB, to: device)
        }

        let after = Self.expected(c)
        #expect(try qmp.count(device.path, "b0") == UInt64(after.count) * Self.granularity, "after the backup")
        #expect(try qmp.bitmap(device.path, "b0")?["busy"]?.boolValue == false)
        try Self.write(Self.setC, to: device)
        #expect(try qmp.count(device.path, "b0") == UInt64(after.union(Self.granules(Self.setC)).count) * Self.granularity,
                "after a later write")

        let images = try FileManager.default.contentsOfDirectory(atPath: chain).filter { $0.hasSuffix(".qcow2") }.sorted()
        #expect(images.count == imagesBefore + (c.failure == .none ? 1 : 0))
        #expect(try !FileManager.default.contentsOfDirectory(atPath: chain).contains { $0.hasSuffix(".partial") })
        for image in images { _ = try QemuImg.check(chain + "/" + image) }
    }
}
