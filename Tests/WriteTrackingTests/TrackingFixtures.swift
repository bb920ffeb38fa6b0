import BlockIO
import Foundation
import Synchronization
import Testing
import TestSupport
@testable import WriteTracking

/// Collects what a tracker's sink receives, per tracked device.
final class ExtentCollector: Sendable {
    private let received = Mutex<[TrackedDeviceID: [Extent]]>([:])

    var sink: WriteTracker.Sink {
        { device, extent in self.received.withLock { $0[device.id, default: []].append(extent) } }
    }

    /// The ranges reported for `id` so far, sorted and with touching or
    /// overlapping ranges joined.
    func extents(_ id: TrackedDeviceID) -> [Extent] {
        joined(received.withLock { $0[id] ?? [] })
    }

    /// Every device with at least one report.
    var reportedDevices: Set<TrackedDeviceID> { received.withLock { Set($0.keys) } }

    func reset() { received.withLock { $0.removeAll() } }
}

/// Sorted, with touching or overlapping ranges joined.
func joined(_ extents: [Extent]) -> [Extent] {
    var out: [Extent] = []
    for e in extents.sorted(by: { $0.offset < $1.offset }) where e.length > 0 {
        if let last = out.last, e.offset <= last.end {
            out[out.count - 1].length = max(last.end, e.end) - last.offset
        } else {
            out.append(e)
        }
    }
    return out
}

/// True when every byte of `needed` lies in some range of `have`.
func covers(_ have: [Extent], _ needed: [Extent]) -> Bool {
    let have = joined(have)
    return needed.allSatisfy { n in have.contains { $0.offset <= n.offset && n.end <= $0.end } }
}

/// A loop device with a tracker on it, torn down whatever happens: the
/// tracker is stopped and its instance removed, then the device detached.
struct TrackedLoop {
    let loop: LoopDevice
    let directory: TemporaryDirectory
    let tracker: WriteTracker
    let collector: ExtentCollector
    let whole: TrackedDevice

    var instancePath: String { tracker.instancePath }

    /// Waits for a barrier (expecting no loss) and forgets everything reported
    /// so far: what set-up did (losetup, mkfs, probing) is not the test's.
    func settle() throws {
        let result = try tracker.barrier()
        #expect(!result.lostEvents, "unexpected loss while settling \(loop.path)")
        collector.reset()
    }

    /// A barrier that must not report loss.
    @discardableResult
    func barrier() throws -> BarrierResult {
        let result = try tracker.barrier()
        #expect(!result.lostEvents)
        return result
    }
}

func withTrackedLoop<T>(size: UInt64 = 64 << 20, bufferKiB: Int = WriteTracker.defaultBufferKiB,
                        _ body: (TrackedLoop) throws -> T) throws -> T {
    let dir = try TemporaryDirectory(prefix: "ringback-tracking")
    defer { dir.remove() }
    let loop = try LoopDevice(size: size, in: dir.path)
    defer { loop.detach() }
    // A loop number is reused: an instance a crashed run left must not feed
    // its old events to this test.
    try WriteTracker.removeInstance(disk: loop.path)
    let collector = ExtentCollector()
    let tracker = try WriteTracker(disk: loop.path, bufferKiB: bufferKiB, sink: collector.sink)
    let instance = tracker.instancePath
    defer {
        #expect(throws: Never.self) { try tracker.stop(removeInstance: true) }
        #expect(!FileManager.default.fileExists(atPath: instance), "the instance \(instance) was left behind")
    }
    #expect(tracker.createdInstance)
    let whole = try tracker.track(device: loop.path)
    let fixture = TrackedLoop(loop: loop, directory: dir, tracker: tracker, collector: collector, whole: whole)
    try fixture.settle()
    return try body(fixture)
}

/// `dd` of random bytes onto a device with O_DIRECT: `length` bytes at byte
/// `offset`, in blocks of `blockSize`.
func directWrite(_ device: String, offset: UInt64, length: UInt64, blockSize: UInt64) throws {
    precondition(length % blockSize == 0)
    try Shell.check(["dd", "if=/dev/urandom", "of=\(device)", "bs=\(blockSize)", "count=\(length / blockSize)",
                     "seek=\(offset)", "oflag=direct,seek_bytes", "conv=notrunc", "status=none"])
}

/// fio's 4 KiB random-write load with io_uring at queue depth 32.
func randomWriteLoad(_ device: String, seconds: Int, size: UInt64 = 32 << 20) throws {
    try Shell.check(["fio", "--name=load", "--filename=\(device)", "--rw=randwrite", "--bs=4k",
                     "--ioengine=io_uring", "--direct=1", "--iodepth=32", "--runtime=\(seconds)", "--time_based",
                     "--size=\(size)", "--output-format=terse"])
}

/// The physical ranges of a file's extents, from `filefrag -e -b512` (an
/// oracle outside ringback), in bytes from the start of the device.
func physicalExtents(of file: String) throws -> [Extent] {
    let out = try Shell.check(["filefrag", "-e", "-b512", file])
    // "   0:        0..    2047:      34816..     36863:   2048:             last,eof"
    var extents: [Extent] = []
    for line in out.split(separator: "\n") {
        let columns = line.split(separator: ":").map { $0.trimmingCharacters(in: .whitespaces) }
        guard columns.count >= 4, Int(columns[0]) != nil else { continue }
        let physical = columns[2].components(separatedBy: "..").map { $0.trimmingCharacters(in: .whitespaces) }
        guard physical.count == 2, let first = UInt64(physical[0]), let count = UInt64(columns[3]) else { continue }
        extents.append(Extent(offset: first * 512, length: count * 512))
    }
    return extents
}
