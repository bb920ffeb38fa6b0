import BlockDevices
import Foundation
import Synchronization
import Testing
import TestSupport
@testable import WriteTracking

// TEMPORARY: measurement only, deleted after use.
@Suite(.enabled(if: ProcessInfo.processInfo.environment["RB_MEASURE"] != nil))
struct OverheadMeasurement {
    func iops(_ device: String, seconds: Int) throws -> Double {
        let out = try Shell.check(["fio", "--name=m", "--filename=\(device)", "--rw=randwrite", "--bs=4k",
                                   "--ioengine=io_uring", "--direct=1", "--iodepth=32", "--runtime=\(seconds)",
                                   "--time_based", "--size=256M", "--output-format=json"])
        let json = try JSONSerialization.jsonObject(with: Data(out.utf8)) as! [String: Any]
        let job = (json["jobs"] as! [[String: Any]])[0]
        return (job["write"] as! [String: Any])["iops"] as! Double
    }

    @Test func measure() throws {
        let base = ProcessInfo.processInfo.environment["RB_MEASURE"]!
        let dir = try TemporaryDirectory(prefix: "rb-measure", under: base)
        defer { dir.remove() }
        let direct = ProcessInfo.processInfo.environment["RB_DIRECT"] != nil
        let loop = try LoopDevice(size: 256 << 20, in: dir.path, directIO: direct, fill: .none)
        defer { loop.detach() }
        try Shell.check(["dd", "if=/dev/zero", "of=\(loop.path)", "bs=1M", "count=256", "oflag=direct", "status=none"])
        try WriteTracker.removeInstance(disk: loop.path)
        var ratios: [Double] = []
        func cpuSeconds() -> Double {
            var u = rusage()
            getrusage(RUSAGE_SELF.rawValue, &u)
            return Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6
        }
        func tracked(_ seconds: Int) throws -> (Double, Double) {
            let bytes = Mutex<UInt64>(0)
            let tracker = try WriteTracker(disk: loop.path, sink: { _, e in bytes.withLock { $0 += e.length } })
            try tracker.track(device: loop.path)
            tracker.start()
            let c0 = cpuSeconds()
            let on = try iops(loop.path, seconds: seconds)
            let c1 = cpuSeconds()
            let r = try tracker.barrier()
            try tracker.stop(removeInstance: true)
            #expect(!r.lostEvents)
            let seen = bytes.withLock { $0 }
            #expect(Double(seen) >= on * Double(seconds) * 4096 * 0.98)
            return (on, c1 - c0)
        }
        func kernelOnly(_ seconds: Int) throws -> Double {
            // Events recorded into a buffer big enough for the run, nobody reading.
            let info = try BlockDevices.DeviceProbe.info(path: loop.path)
            let instance = try TraceInstance(disk: info.name, device: info.deviceNumber, bufferKiB: 131072)
            defer { try? instance.remove() }
            return try iops(loop.path, seconds: seconds)
        }
        let seconds = 3
        var kernelRatios: [Double] = []
        for rep in 1...8 {
            var off = 0.0, on = 0.0, cpu = 0.0, kernel = 0.0
            for step in 0..<3 {
                switch (rep + step) % 3 {
                case 0: off = try iops(loop.path, seconds: seconds)
                case 1: (on, cpu) = try tracked(seconds)
                default: kernel = try kernelOnly(seconds)
                }
            }
            print("MEASURE rep \(rep): off \(Int(off)) tracker \(Int(on)) kernel-only \(Int(kernel)) ratio \(String(format: "%.3f", on / off)) kernel-ratio \(String(format: "%.3f", kernel / off)) readerCPU \(String(format: "%.2f", cpu / Double(seconds) * 100))%")
            ratios.append(on / off)
            kernelRatios.append(kernel / off)
        }
        let k = kernelRatios.sorted()
        print("MEASURE kernel-only ratios median \(String(format: "%.3f", (k[3] + k[4]) / 2))")
        print("MEASURE ratios \(ratios.map { String(format: "%.3f", $0) }) median \(String(format: "%.3f", (ratios.sorted()[3] + ratios.sorted()[4]) / 2))")
    }
}
