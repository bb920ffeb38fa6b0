import BlockDevices
import BlockIO
import Foundation
import Testing
import TestSupport
@testable import WriteTracking

/// The tracker against the real kernel: loop devices, tracefs, dd, blkdiscard,
/// ext4 with filefrag, partitions added by partx, and fio to overflow the
/// buffer. Serialized: the loss test's load would slow the others' barriers.
@Suite(.serialized, .enabled(if: TestEnvironment.canUseLoopDevices, Comment(rawValue: TestEnvironment.loopSkipReason)))
struct LoopTrackingTests {
    /// (offset, length, dd block size): 512 B, 4 KiB, 1 MiB, and spans that are
    /// sector- but not page-aligned.
    @Test(arguments: [
        (UInt64(2049 * 512), UInt64(512), UInt64(512)),
        (UInt64(3 << 20), UInt64(4096), UInt64(4096)),
        (UInt64(5 << 20), UInt64(1 << 20), UInt64(1 << 20)),
        (UInt64((7 << 20) + 1536), UInt64(1536), UInt64(1536)),
        (UInt64((9 << 20) + 3584), UInt64(7 * 512), UInt64(512)),
        (UInt64((40 << 20) - 512), UInt64(64 << 10), UInt64(64 << 10)),
    ])
    func directWritesAreReportedExactly(offset: UInt64, length: UInt64, blockSize: UInt64) throws {
        try withTrackedLoop { t in
            try directWrite(t.loop.path, offset: offset, length: length, blockSize: blockSize)
            try t.barrier()
            #expect(t.collector.extents(t.whole.id) == [Extent(offset: offset, length: length)])
        }
    }

    @Test func severalWritesAreEachReported() throws {
        try withTrackedLoop { t in
            let writes = [Extent(offset: 0, length: 512), Extent(offset: 16 << 20, length: 256 << 10),
                          Extent(offset: 32736 << 10, length: 64 << 10)]
            for w in writes { try directWrite(t.loop.path, offset: w.offset, length: w.length, blockSize: 512) }
            try t.barrier()
            #expect(t.collector.extents(t.whole.id) == writes)
        }
    }

    @Test func readsAndFlushesReportNothing() throws {
        try withTrackedLoop { t in
            try Shell.check(["dd", "if=\(t.loop.path)", "of=/dev/null", "bs=1M", "count=8", "iflag=direct", "status=none"])
            try Shell.check(["dd", "if=\(t.loop.path)", "of=/dev/null", "bs=4k", "count=64", "skip=100", "status=none"])
            // An fsync of the device node: an empty flush at most.
            try Shell.check(["sync", t.loop.path])
            try t.barrier()
            #expect(t.collector.reportedDevices.isEmpty)
        }
    }

    @Test func bufferedUnalignedWriteIsCovered() throws {
        try withTrackedLoop { t in
            // 100 bytes at an odd offset go through the page cache; the device
            // sees a read-modify-write of whole blocks around them.
            try Shell.check(["dd", "if=/dev/urandom", "of=\(t.loop.path)", "bs=100", "count=1",
                             "seek=\((10 << 20) + 700)", "oflag=seek_bytes", "conv=notrunc,fsync", "status=none"])
            try t.barrier()
            let reported = t.collector.extents(t.whole.id)
            #expect(covers(reported, [Extent(offset: (10 << 20) + 700, length: 100)]))
            #expect(reported.reduce(0) { $0 + $1.length } <= 64 << 10, "\(reported)")
        }
    }

    @Test func discardAndWriteZeroesAreReported() throws {
        try withTrackedLoop { t in
            try Shell.check(["blkdiscard", "-o", "\(1 << 20)", "-l", "\(256 << 10)", t.loop.path])
            try t.barrier()
            #expect(t.collector.extents(t.whole.id) == [Extent(offset: 1 << 20, length: 256 << 10)])

            t.collector.reset()
            try Shell.check(["blkdiscard", "-z", "-o", "\(2 << 20)", "-l", "\(128 << 10)", t.loop.path])
            try t.barrier()
            #expect(t.collector.extents(t.whole.id) == [Extent(offset: 2 << 20, length: 128 << 10)])
        }
    }

    @Test func fileWritesOnExt4AreCoveredByTheirExtents() throws {
        try withTrackedLoop(size: 128 << 20) { t in
            try Shell.check(["mkfs.ext4", "-q", "-F", t.loop.path])
            let mountPoint = t.directory.file("mnt")
            try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
            try Shell.check(["mount", t.loop.path, mountPoint])
            defer { unmount(mountPoint) }
            try t.settle()

            let direct = "\(mountPoint)/direct.bin", synced = "\(mountPoint)/synced.bin"
            try Shell.check(["dd", "if=/dev/urandom", "of=\(direct)", "bs=1M", "count=3", "oflag=direct", "status=none"])
            try Shell.check(["dd", "if=/dev/urandom", "of=\(synced)", "bs=64k", "count=5", "conv=fsync", "status=none"])
            try t.barrier()
            let reported = t.collector.extents(t.whole.id)
            for file in [direct, synced] {
                let extents = try physicalExtents(of: file)
                #expect(!extents.isEmpty, "filefrag listed no extents for \(file)")
                #expect(extents.reduce(0) { $0 + $1.length } == (file == direct ? 3 << 20 : 5 * 64 << 10))
                #expect(covers(reported, extents), "\(file): extents \(extents) not within \(reported)")
            }
        }
    }

    @Test func partitionWritesLandAtThePartitionsOwnOffsets() throws {
        let dir = try TemporaryDirectory(prefix: "ringback-tracking")
        defer { dir.remove() }
        let loop = try LoopDevice(size: 64 << 20, in: dir.path)
        defer { loop.detach() }
        // Partition 1: 2 MiB at 1 MiB; partition 2: 4 MiB at 4 MiB.
        try Shell.check(["sfdisk", "-q", "--no-reread", loop.path],
                        stdin: "label: dos\nstart=2048, size=4096\nstart=8192, size=8192\n")
        defer { _ = try? Shell.run(["partx", "-d", loop.path]) }
        try Shell.check(["partx", "-u", loop.path])
        let p1 = "\(loop.path)p1", p2 = "\(loop.path)p2"
        #expect(FileManager.default.fileExists(atPath: p2))

        try WriteTracker.removeInstance(disk: loop.path)
        let collector = ExtentCollector()
        // Opened by a partition's path: the tracker is its disk's.
        let tracker = try WriteTracker(disk: p2, sink: collector.sink)
        defer { try? tracker.stop(removeInstance: true) }
        #expect(tracker.disk.path == loop.path)
        let first = try tracker.track(device: p1)
        let second = try tracker.track(device: p2)
        let whole = try tracker.track(device: loop.path)
        #expect((first.diskOffset, second.diskOffset, whole.diskOffset) == (1 << 20, 4 << 20, 0))
        #expect((first.size, second.size) == (2 << 20, 4 << 20))
        #expect(!(try tracker.barrier().lostEvents))
        collector.reset()

        try directWrite(p2, offset: 64 << 10, length: 4096, blockSize: 4096)
        // A write across the end of partition 1 as seen from the disk.
        try directWrite(loop.path, offset: (3 << 20) - 512, length: 1024, blockSize: 512)
        #expect(!(try tracker.barrier().lostEvents))
        #expect(collector.extents(second.id) == [Extent(offset: 64 << 10, length: 4096)])
        #expect(collector.extents(first.id) == [Extent(offset: (2 << 20) - 512, length: 512)])
        #expect(collector.extents(whole.id) == [Extent(offset: (3 << 20) - 512, length: 1024),
                                                Extent(offset: (4 << 20) + (64 << 10), length: 4096)])

        // Untracked, partition 1 hears nothing more.
        tracker.untrack(first.id)
        collector.reset()
        try directWrite(p1, offset: 0, length: 4096, blockSize: 4096)
        #expect(!(try tracker.barrier().lostEvents))
        #expect(collector.extents(first.id).isEmpty)
        #expect(collector.extents(whole.id) == [Extent(offset: 1 << 20, length: 4096)])
        #expect(tracker.trackedDevices.map(\.id) == [second.id, whole.id])
    }

    @Test func aDeviceOfAnotherDiskIsRefused() throws {
        try withTrackedLoop { t in
            let other = try LoopDevice(size: 8 << 20, in: t.directory.path, name: "other.img")
            defer { other.detach() }
            #expect {
                try t.tracker.track(device: other.path)
            } throws: { error in
                (error as? TrackingError)?.code == .notOnDisk
                    && "\(error)" == "cannot track \(other.path): it is neither \(t.loop.path) nor one of its partitions"
            }
        }
    }

    @Test func aSecondTrackerOfTheSameDiskIsBusy() throws {
        try withTrackedLoop { t in
            #expect {
                try WriteTracker(disk: t.loop.path, sink: { _, _ in })
            } throws: { error in
                (error as? TrackingError)?.code == .busy && (error as? TrackingError)?.path == t.instancePath
            }
            // The refused tracker left the instance alone.
            try directWrite(t.loop.path, offset: 8192, length: 4096, blockSize: 4096)
            try t.barrier()
            #expect(t.collector.extents(t.whole.id) == [Extent(offset: 8192, length: 4096)])
        }
    }

    @Test(.enabled(if: Shell.has("fio") || TestEnvironment.rootTestsRequired, "needs fio"))
    func aFloodedTinyBufferReportsLossEveryTime() throws {
        try withTrackedLoop(bufferKiB: 4) { t in
            for round in 1...3 {
                t.tracker.setReadingPaused(true)
                try randomWriteLoad(t.loop.path, seconds: 1)
                let flooded = try t.tracker.barrier()
                #expect(flooded.lostEvents, "round \(round): a flooded 4 KiB buffer reported no loss")
                t.tracker.setReadingPaused(false)
                // The loss is reported once; the next barrier is clean again.
                let after = try t.tracker.barrier()
                #expect(!after.lostEvents, "round \(round)")
                #expect(after.lossCount >= flooded.lossCount && flooded.lossCount > 0)
            }
            // And tracking goes on.
            t.collector.reset()
            try directWrite(t.loop.path, offset: 12 << 20, length: 4096, blockSize: 4096)
            try t.barrier()
            #expect(t.collector.extents(t.whole.id) == [Extent(offset: 12 << 20, length: 4096)])
        }
    }

    @Test func aNewTrackerReattachesAndGetsTheWritesMadeInBetween() throws {
        let dir = try TemporaryDirectory(prefix: "ringback-tracking")
        defer { dir.remove() }
        let loop = try LoopDevice(size: 64 << 20, in: dir.path)
        defer { loop.detach() }
        try WriteTracker.removeInstance(disk: loop.path)
        defer { try? WriteTracker.removeInstance(disk: loop.path) }

        var first: WriteTracker? = try WriteTracker(disk: loop.path, sink: { _, _ in })
        let instance = first!.instancePath
        try first!.track(device: loop.path)
        #expect(!(try first!.barrier().lostEvents))
        try directWrite(loop.path, offset: 1 << 20, length: 4096, blockSize: 4096)
        first = nil   // a daemon that exits without removing its instance
        #expect(FileManager.default.fileExists(atPath: instance))

        try directWrite(loop.path, offset: 20 << 20, length: 8192, blockSize: 4096)
        try directWrite(loop.path, offset: 30 << 20, length: 512, blockSize: 512)

        let collector = ExtentCollector()
        let second = try WriteTracker(disk: loop.path, sink: collector.sink)
        defer { try? second.stop(removeInstance: true) }
        #expect(!second.createdInstance)
        #expect(second.instancePath == instance)
        let whole = try second.track(device: loop.path)
        #expect(!(try second.barrier().lostEvents))
        #expect(covers(collector.extents(whole.id), [Extent(offset: 20 << 20, length: 8192),
                                                      Extent(offset: 30 << 20, length: 512)]))
    }

    @Test(.enabled(if: Shell.has("fio") || TestEnvironment.rootTestsRequired, "needs fio"))
    func lossWhileNoTrackerRanIsReportedUnlessTheBaselineCoversIt() throws {
        let dir = try TemporaryDirectory(prefix: "ringback-tracking")
        defer { dir.remove() }
        let loop = try LoopDevice(size: 64 << 20, in: dir.path)
        defer { loop.detach() }
        try WriteTracker.removeInstance(disk: loop.path)
        defer { try? WriteTracker.removeInstance(disk: loop.path) }

        do {
            let first = try WriteTracker(disk: loop.path, bufferKiB: 4, sink: { _, _ in })
            #expect(!(try first.barrier().lostEvents))
            try first.stop(removeInstance: false)
        }
        try randomWriteLoad(loop.path, seconds: 1)

        let second = try WriteTracker(disk: loop.path, bufferKiB: 4, sink: { _, _ in })
        let seen = try second.barrier()
        #expect(seen.lostEvents && seen.lossCount > 0)
        try second.stop(removeInstance: false)

        // A daemon that saved that count and re-attaches is not told again.
        let third = try WriteTracker(disk: loop.path, bufferKiB: 4, lossBaseline: seen.lossCount, sink: { _, _ in })
        #expect(!third.createdInstance)
        #expect(!(try third.barrier().lostEvents))
        try third.stop(removeInstance: true)

        // One that expected to continue but finds the instance gone missed
        // whatever was written meanwhile.
        let fourth = try WriteTracker(disk: loop.path, lossBaseline: seen.lossCount, sink: { _, _ in })
        defer { try? fourth.stop(removeInstance: true) }
        #expect(fourth.createdInstance)
        #expect(try fourth.barrier().lostEvents)
        #expect(!(try fourth.barrier().lostEvents))
    }

    @Test func anInstanceIsConfiguredAsDesignedAndItsLayoutsParse() throws {
        let device = DeviceNumber(major: 7, minor: 1_000_000)
        let instance = try TraceInstance(disk: "layout-test", device: device, bufferKiB: 16)
        defer { try? instance.remove() }
        func attribute(_ file: String) throws -> String {
            try String(contentsOfFile: instance.file(file), encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        #expect(instance.path == "/sys/kernel/tracing/instances/ringback-layout-test")
        #expect(try attribute("options/overwrite") == "0")
        #expect(try attribute("tracing_on") == "1")
        for event in ["block_rq_complete", "block_bio_complete"] {
            #expect(try attribute("events/block/\(event)/filter") == "dev == \(7 << 20 | 1_000_000)")
            #expect(try attribute("events/block/\(event)/enable") == "1")
        }
        #expect(try instance.pageHeaderLayout() == .lp64)
        #expect(try instance.recordHeaderLayout() == RecordHeaderLayout())
        #expect(try instance.subBufferSize() >= 4096)
        #expect(try instance.cpus().count == ProcessInfo.processInfo.processorCount)
        #expect(try instance.lossCount(cpus: instance.cpus()) == 0)
        let rq = try instance.eventFormat("block/block_rq_complete")
        #expect(rq.fields["dev"]?.size == 4 && rq.fields["sector"]?.size == 8 && rq.fields["rwbs"] != nil)
    }
}

/// Mounting tracefs where it is missing, on a fresh directory: the same
/// tracefs can be mounted twice, so the machine's own mount is left alone.
@Suite(.enabled(if: TestEnvironment.isRoot || TestEnvironment.rootTestsRequired, "needs root to mount tracefs"))
struct TracefsMountTests {
    @Test func tracefsIsMountedWhenAbsent() throws {
        let dir = try TemporaryDirectory(prefix: "ringback-tracefs")
        defer { dir.remove() }
        #expect(!FileManager.default.fileExists(atPath: dir.file("instances")))
        try TraceInstance.ensureTracefs(root: dir.path)
        defer { unmount(dir.path) }
        #expect(FileManager.default.fileExists(atPath: dir.file("instances")))
        #expect(FileManager.default.fileExists(atPath: dir.file("events/block/block_rq_complete/format")))
        // Already mounted: nothing to do.
        try TraceInstance.ensureTracefs(root: dir.path)
    }

    @Test func aMissingRootIsNamedInTheError() {
        #expect {
            try TraceInstance.ensureTracefs(root: "/nonexistent/ringback-tracing")
        } throws: { error in
            (error as? TrackingError)?.code == .tracefsUnavailable
                && "\(error)".hasPrefix("cannot use tracefs at /nonexistent/ringback-tracing: ")
        }
    }
}

/// Unmounts, retrying a busy filesystem, and lazily as a last resort.
func unmount(_ mountPoint: String) {
    for _ in 0..<10 {
        if (try? Shell.run(["umount", mountPoint]).succeeded) == true { return }
        usleep(100_000)
    }
    _ = try? Shell.run(["umount", "-l", mountPoint])
}
