import BlockIO
import Foundation
import Testing
import TestSupport
@testable import BlockDevices

/// Probing real loop devices, checked against util-linux (blockdev, losetup,
/// blkid, sfdisk, lsblk) rather than against ringback's own reading of sysfs.
@Suite(.enabled(if: TestEnvironment.canUseLoopDevices, Comment(rawValue: TestEnvironment.loopSkipReason)))
struct LoopDeviceProbeTests {
    @Test(arguments: [512, 4096])
    func sizeSectorSizesKindAndNumberMatchTheKernel(sectorSize: Int) throws {
        try withLoop(sectorSize: sectorSize) { loop, _ in
            let info = try DeviceProbe.info(path: loop.path)
            let oracle = try Shell.check(["blockdev", "--getsize64", "--getss", "--getpbsz", loop.path])
                .split(separator: "\n").map(String.init)
            #expect(oracle == ["\(64 << 20)", "\(sectorSize)", "\(info.physicalSectorSize)"])
            #expect(info.size == 64 << 20)
            #expect(info.logicalSectorSize == sectorSize)
            #expect(info.kind == .loop)
            #expect(info.name == (loop.path as NSString).lastPathComponent)
            #expect(info.path == loop.path)
            let backing = try Shell.check(["losetup", "-n", "-O", "BACK-FILE", loop.path])
            #expect(info.loopBackingFile == backing.trimmingCharacters(in: .whitespacesAndNewlines))
            let node = try BlockFile(path: loop.path, mode: .read, direct: false)
            #expect(info.deviceNumber == DeviceNumber(rawValue: node.rdev))
            #expect(info.major == 7)
            #expect(!info.readOnly)
            #expect(info.holders.isEmpty && info.slaves.isEmpty && info.mountpoints.isEmpty)
            #expect(info.partition == nil)
            // A blank device has no signature; libblkid finding none is not an error.
            #expect(info.fsType == nil && info.fsUUID == nil && info.fsLabel == nil)
            #expect(try DeviceProbe.all().contains(info))
        }
    }

    @Test func readOnlyFlagFollowsBlockdevSetro() throws {
        try withLoop { loop, _ in
            try Shell.check(["blockdev", "--setro", loop.path])
            defer { _ = try? Shell.run(["blockdev", "--setrw", loop.path]) }
            #expect(try DeviceProbe.info(path: loop.path).readOnly)
            try Shell.check(["blockdev", "--setrw", loop.path])
            #expect(try !DeviceProbe.info(path: loop.path).readOnly)
        }
    }

    @Test func ext4TypeLabelAndUUIDMatchBlkid() throws {
        try withLoop { loop, _ in
            try Shell.check(["mkfs.ext4", "-q", "-F", "-L", "ringback test", loop.path])
            let info = try DeviceProbe.info(path: loop.path)
            let blkid = try blkidExport(loop.path)
            #expect(blkid["TYPE"] == "ext4")
            #expect(info.fsType == blkid["TYPE"])
            #expect(info.fsLabel == "ringback test")
            #expect(info.fsLabel == blkid["LABEL"])
            #expect(info.fsUUID != nil)
            #expect(info.fsUUID == blkid["UUID"])
        }
    }

    @Test func mountedExt4IsListedAndHoldsPathsInside() throws {
        try withLoop { loop, dir in
            try Shell.check(["mkfs.ext4", "-q", "-F", loop.path])
            // A space in the mount point: mountinfo shows it as \040.
            let mountPoint = canonical(dir.file("mnt point"))
            let dev = try DeviceProbe.info(path: loop.path).deviceNumber
            try withMount(loop.path, at: mountPoint) {
                try Shell.check(["mkdir", "\(mountPoint)/sub"])
                let info = try DeviceProbe.info(path: loop.path)
                #expect(info.mountpoints == [mountPoint])

                let table = try MountTable.current()
                #expect(table.mounts(of: dev).map(\.mountPoint) == [mountPoint])
                let holder = try table.mount(containing: "\(mountPoint)/sub")
                #expect(holder.device == dev)
                #expect(holder.mountPoint == mountPoint)
                #expect(holder.fsType == "ext4")
                #expect(holder.source == loop.path)
                // A target that does not exist yet is inside the same filesystem.
                #expect(try table.mount(containing: "\(mountPoint)/sub/new/backup.qcow2").device == dev)
                #expect(try table.mount(containing: mountPoint).device == dev)
                // The directory holding the mount point is not on the device.
                #expect(try table.mount(containing: dir.path).device != dev)

                #expect(table.isMounted(device: info))
                #expect(try table.filesystemsMounted(from: loop.path).map(\.mountPoint) == [mountPoint])
            }
            let after = try MountTable.current()
            #expect(!after.isMounted(device: try DeviceProbe.info(path: loop.path)))
            #expect(try after.filesystemsMounted(from: loop.path).isEmpty)
        }
    }

    @Test(arguments: ["gpt", "dos"], [512, 4096])
    func partitionsHaveKindStartAndParent(label: String, sectorSize: Int) throws {
        try withLoop(sectorSize: sectorSize) { loop, _ in
            try withPartitions(on: loop, label: label, sectorSize: sectorSize) { names in
                let disk = (loop.path as NSString).lastPathComponent
                #expect(names == ["\(disk)p1", "\(disk)p2"])
                let table = try sfdiskPartitions(loop.path)
                let parts = try names.map { try DeviceProbe.info(path: "/dev/\($0)") }
                #expect(parts.map(\.kind) == [.partition, .partition])
                #expect(parts.map { $0.partition?.number } == [1, 2])
                #expect(parts.map { $0.partition?.parent } == [disk, disk])
                // What we asked sfdisk for, what sfdisk reads back, what we report.
                #expect(parts.map { $0.partition?.start } == [1 << 20, 4 << 20])
                #expect(parts.map { $0.partition?.start } == table.map { $0.start * UInt64(sectorSize) })
                #expect(parts.map(\.size) == table.map { $0.size * UInt64(sectorSize) })
                #expect(parts.map(\.size) == [2 << 20, 4 << 20])
                #expect(parts.allSatisfy { $0.logicalSectorSize == sectorSize })
                // lsblk, which reads the same sysfs through its own code, agrees.
                let lsblk = try Shell.check(["lsblk", "-b", "-n", "-o", "NAME,PKNAME,START,SIZE", "-r", loop.path])
                for p in parts {
                    let start = p.partition!.start / 512, size = p.size
                    #expect(lsblk.contains("\(p.name) \(disk) \(start) \(size)"))
                }
                // Partitions are children of the disk, not holders of it.
                let whole = try DeviceProbe.info(path: loop.path)
                #expect(whole.kind == .loop)
                #expect(whole.holders.isEmpty)
                #expect(DeviceProbe().stack(above: disk).sorted() == names)
                let listed = try DeviceProbe.all().map(\.name)
                let at = try #require(listed.firstIndex(of: disk))
                #expect(Array(listed[at...].prefix(3)) == [disk] + names)
            }
        }
    }

    @Test func aMountedPartitionMakesItsDiskMounted() throws {
        try withLoop { loop, dir in
            try withPartitions(on: loop, label: "gpt", sectorSize: 512) { names in
                let p2 = "/dev/\(names[1])"
                try Shell.check(["mkfs.ext4", "-q", "-F", p2])
                let mountPoint = canonical(dir.file("mnt"))
                try withMount(p2, at: mountPoint) {
                    let table = try MountTable.current()
                    let partition = try DeviceProbe.info(path: p2)
                    #expect(partition.mountpoints == [mountPoint])
                    #expect(partition.fsType == "ext4")
                    #expect(try table.filesystemsMounted(from: loop.path).map(\.mountPoint) == [mountPoint])
                    #expect(table.isMounted(device: try DeviceProbe.info(path: loop.path)))
                    #expect(!table.isMounted(device: try DeviceProbe.info(path: "/dev/\(names[0])")))
                    #expect(try table.mount(containing: "\(mountPoint)/x").device == partition.deviceNumber)
                }
            }
        }
    }

    /// btrfs reports an anonymous 0:N in mountinfo and st_dev; the mount is found
    /// through its source node instead.
    @Test(.enabled(if: Shell.has("mkfs.btrfs"), "needs mkfs.btrfs (btrfs-progs)"))
    func btrfsIsFoundThroughItsSourceDespiteAnAnonymousNumber() throws {
        try withLoop(size: 128 << 20) { loop, dir in
            try Shell.check(["mkfs.btrfs", "-q", "-f", loop.path])
            let mountPoint = canonical(dir.file("btrfs"))
            try withMount(loop.path, at: mountPoint) {
                let table = try MountTable.current()
                let info = try DeviceProbe.info(path: loop.path)
                let holder = try table.mount(containing: "\(mountPoint)/new-file")
                #expect(holder.mountPoint == mountPoint)
                #expect(holder.fsType == "btrfs")
                #expect(holder.device != info.deviceNumber, "btrfs is expected to report an anonymous number")
                #expect(info.mountpoints == [mountPoint])
                #expect(try table.filesystemsMounted(from: loop.path).map(\.mountPoint) == [mountPoint])
                #expect(table.isMounted(device: info))
            }
        }
    }
}

/// Errors for paths that are not block devices; no root needed.
struct DeviceProbeErrorTests {
    @Test func aMissingPathIsASystemErrorNamingIt() {
        #expect {
            try DeviceProbe.info(path: "/dev/ringback-no-such-device")
        } throws: { error in
            (error as? SystemError)?.errno == ENOENT
                && "\(error)" == "cannot probe /dev/ringback-no-such-device: No such file or directory (ENOENT)"
        }
        #expect(throws: SystemError.self) {
            try MountTable.current().filesystemsMounted(from: "/dev/ringback-no-such-device")
        }
    }

    @Test func otherFileTypesAreRefusedWithWhatTheyAre() throws {
        let dir = try TemporaryDirectory(prefix: "ringback-devices")
        defer { dir.remove() }
        try "x".write(toFile: dir.file("image.raw"), atomically: false, encoding: .utf8)
        for (path, what) in [(dir.file("image.raw"), "a regular file"), (dir.path, "a directory"),
                             ("/dev/null", "a character device")] {
            #expect {
                try DeviceProbe.info(path: path)
            } throws: { error in
                (error as? DeviceError)?.code == .notBlockDevice && (error as? DeviceError)?.path == path
                    && "\(error)" == "cannot probe \(path): it is \(what), not a block device"
            }
        }
    }

    @Test func listingCoversEveryDeviceThatStaysPut() throws {
        let before = Set(try FileManager.default.contentsOfDirectory(atPath: "/sys/class/block"))
        let devices = try DeviceProbe.all()
        let after = Set(try FileManager.default.contentsOfDirectory(atPath: "/sys/class/block"))
        // Other tests attach and detach loop devices meanwhile: only what was
        // there before and after must be listed.
        #expect(before.intersection(after).isSubset(of: devices.map(\.name)))
        #expect(Set(devices.map(\.name)).count == devices.count)
        for d in devices {
            #expect(d.logicalSectorSize >= 512 && d.logicalSectorSize.nonzeroBitCount == 1, "\(d.name)")
            #expect(d.physicalSectorSize >= d.logicalSectorSize, "\(d.name)")
        }
    }
}

// MARK: - Helpers

/// Runs `body` with a fresh loop device over a sparse file, detached and
/// removed afterwards whatever happens.
func withLoop<T>(size: UInt64 = 64 << 20, sectorSize: Int = 512,
                 _ body: (LoopDevice, TemporaryDirectory) throws -> T) throws -> T {
    let dir = try TemporaryDirectory(prefix: "ringback-devices")
    defer { dir.remove() }
    let loop = try LoopDevice(size: size, in: dir.path, sectorSize: sectorSize)
    defer { loop.detach() }
    return try body(loop, dir)
}

/// Mounts `device` at `mountPoint` for the duration of `body`.
func withMount<T>(_ device: String, at mountPoint: String, _ body: () throws -> T) throws -> T {
    try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
    try Shell.check(["mount", device, mountPoint])
    defer {
        // A busy filesystem (a straggling reader) is retried, then detached lazily
        // so that the loop device can still go.
        var unmounted = false
        for _ in 0..<10 where !unmounted {
            unmounted = (try? Shell.run(["umount", mountPoint]).succeeded) == true
            if !unmounted { usleep(100_000) }
        }
        if !unmounted { _ = try? Shell.run(["umount", "-l", mountPoint]) }
    }
    return try body()
}

/// Writes a two-partition table (1 MiB + 2 MiB at 1 MiB, 4 MiB at 4 MiB) and has
/// partx tell the kernel about it: a loop device attached without --partscan
/// is not scanned, and a kernel without the parser would not find them anyway.
func withPartitions<T>(on loop: LoopDevice, label: String, sectorSize: Int,
                       _ body: ([String]) throws -> T) throws -> T {
    let s = 1 << 20 / sectorSize
    let script = "label: \(label)\nstart=\(s), size=\(2 * s)\nstart=\(4 * s), size=\(4 * s)\n"
    try Shell.check(["sfdisk", "-q", "--no-reread", loop.path], stdin: script)
    defer { _ = try? Shell.run(["partx", "-d", loop.path]) }
    // -u rather than -a: it also works when the kernel has added them already.
    try Shell.check(["partx", "-u", loop.path])
    let disk = (loop.path as NSString).lastPathComponent
    let names = try FileManager.default.contentsOfDirectory(atPath: "/sys/class/block/\(disk)")
        .filter { FileManager.default.fileExists(atPath: "/sys/class/block/\(disk)/\($0)/partition") }
        .sorted()
    return try body(names)
}

/// `blkid -p -o export`: low-level probing, no cache, KEY=VALUE lines.
func blkidExport(_ path: String) throws -> [String: String] {
    let out = try Shell.check(["blkid", "-p", "-o", "export", path])
    var tags: [String: String] = [:]
    for line in out.split(separator: "\n") {
        guard let eq = line.firstIndex(of: "=") else { continue }
        // export format escapes spaces with a backslash.
        tags[String(line[..<eq])] = String(line[line.index(after: eq)...]).replacingOccurrences(of: "\\ ", with: " ")
    }
    return tags
}

/// (start, size) in sectors of each partition, as sfdisk reads the table back.
func sfdiskPartitions(_ path: String) throws -> [(start: UInt64, size: UInt64)] {
    struct Dump: Decodable {
        struct Table: Decodable { let partitions: [Partition] }
        struct Partition: Decodable { let start: UInt64; let size: UInt64 }
        let partitiontable: Table
    }
    let json = try Shell.check(["sfdisk", "-J", path])
    return try JSONDecoder().decode(Dump.self, from: Data(json.utf8)).partitiontable.partitions.map { ($0.start, $0.size) }
}

func canonical(_ path: String) -> String {
    URL(fileURLWithPath: path).resolvingSymlinksInPath().path
}
