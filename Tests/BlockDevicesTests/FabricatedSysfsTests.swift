import BlockIO
import Foundation
import Testing
import TestSupport
@testable import BlockDevices

/// A sysfs tree written into a temporary directory with the layout the kernel
/// uses (class/block/NAME → ../../devices/.../NAME, partitions as children of
/// their disk), for what real loop devices cannot show here: device-mapper and
/// LVM kinds, holders and slaves, btrfs-style anonymous device numbers.
final class FabricatedSysfs {
    let directory: TemporaryDirectory
    var sysfs: String { directory.file("sys") }
    var dev: String { directory.file("dev") }
    var mountinfo: String { directory.file("mountinfo") }

    init() throws {
        directory = try TemporaryDirectory(prefix: "ringback-sysfs")
        try FileManager.default.createDirectory(atPath: directory.file("sys/class/block"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dev, withIntermediateDirectories: true)
    }

    var probe: DeviceProbe {
        DeviceProbe(sysfs: sysfs, deviceDirectory: dev, mountinfo: mountinfo, probesFilesystems: false)
    }

    /// Adds a device under devices/`bus`/block (or under its parent disk for a
    /// partition) and its class/block link.
    func add(_ name: String, dev number: String, sectors: UInt64, under parent: String? = nil,
             bus: String = "virtual", attributes: [String: String] = [:],
             queue: (logical: Int, physical: Int)? = (512, 512), holders: [String] = [], slaves: [String] = []) throws {
        let base = try parent.map(resolved) ?? directory.file("sys/devices/\(bus)/block")
        let dir = "\(base)/\(name)"
        var files = ["dev": number, "size": String(sectors), "ro": "0"].merging(attributes) { $1 }
        if let queue {
            files["queue/logical_block_size"] = String(queue.logical)
            files["queue/physical_block_size"] = String(queue.physical)
        }
        for (file, value) in files { try write(value + "\n", to: "\(dir)/\(file)") }
        for (sub, names) in [("holders", holders), ("slaves", slaves)] {
            try FileManager.default.createDirectory(atPath: "\(dir)/\(sub)", withIntermediateDirectories: true)
            for n in names { try write("", to: "\(dir)/\(sub)/\(n)") }
        }
        let relative = String(dir.dropFirst(sysfs.count + 1))
        try FileManager.default.createSymbolicLink(atPath: "\(sysfs)/class/block/\(name)",
                                                   withDestinationPath: "../../\(relative)")
    }

    func resolved(_ name: String) throws -> String {
        try FileManager.default.destinationOfSymbolicLink(atPath: "\(sysfs)/class/block/\(name)")
            .replacingOccurrences(of: "../../", with: sysfs + "/")
    }

    func write(_ text: String, to path: String) throws {
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent,
                                                withIntermediateDirectories: true)
        try text.write(toFile: path, atomically: false, encoding: .utf8)
    }

    /// A host with: an unattached loop0; sda (4096-byte sectors) with sda1
    /// and sda2; an LVM volume dm-0 on sda2; a dm-crypt dm-1 on dm-0; sdb
    /// holding btrfs. Mounted: sda1 on /, dm-1 on /home (listed by its mapper
    /// name with an anonymous number), sdb on /srv (anonymous number).
    static func typicalHost() throws -> FabricatedSysfs {
        let f = try FabricatedSysfs()
        try f.add("loop0", dev: "7:0", sectors: 0)
        try f.add("sda", dev: "8:0", sectors: 2_097_152, bus: "pci0000:00/ata1", queue: (4096, 4096))
        try f.add("sda1", dev: "8:1", sectors: 1_048_576, under: "sda",
                  attributes: ["partition": "1", "start": "2048"], queue: nil)
        try f.add("sda2", dev: "8:2", sectors: 1_046_528, under: "sda",
                  attributes: ["partition": "2", "start": "1050624", "ro": "1"], queue: nil, holders: ["dm-0"])
        try f.add("dm-0", dev: "253:0", sectors: 1_040_384,
                  attributes: ["dm/name": "vg-home", "dm/uuid": "LVM-Jx3v0FzWn0ehM1tDjKHhOmxMSGOrBLSiPlXcbEhx"],
                  holders: ["dm-1"], slaves: ["sda2"])
        try f.add("dm-1", dev: "253:1", sectors: 1_007_616,
                  attributes: ["dm/name": "home crypt", "dm/uuid": "CRYPT-LUKS2-0123-home"], slaves: ["dm-0"])
        try f.add("sdb", dev: "8:16", sectors: 4_194_304, bus: "pci0000:00/ata2")
        try f.write("""
            1 0 8:1 / / rw,relatime - ext4 \(f.dev)/sda1 rw
            2 1 0:41 / /home rw,relatime - xfs \(f.dev)/mapper/home\\040crypt rw
            3 1 0:45 /@srv /srv rw,relatime - btrfs \(f.dev)/sdb rw,subvol=/@srv
            4 1 0:22 / /proc rw - proc proc rw

            """, to: f.mountinfo)
        return f
    }
}

struct FabricatedSysfsTests {
    @Test func classifiesEveryKindAndListsDisksBeforeTheirPartitions() throws {
        let host = try FabricatedSysfs.typicalHost()
        let devices = try host.probe.devices()
        #expect(devices.map(\.name) == ["dm-0", "dm-1", "loop0", "sda", "sda1", "sda2", "sdb"])
        let kinds = Dictionary(uniqueKeysWithValues: devices.map { ($0.name, $0.kind) })
        #expect(kinds == ["dm-0": .lvm, "dm-1": .dm, "loop0": .loop, "sda": .disk,
                          "sda1": .partition, "sda2": .partition, "sdb": .disk])
    }

    @Test func partitionsTakeStartParentAndSectorSizesFromTheirDisk() throws {
        let host = try FabricatedSysfs.typicalHost()
        let sda2 = try host.probe.device(named: "sda2")
        #expect(sda2.partition == PartitionInfo(number: 2, start: 1_050_624 * 512, parent: "sda"))
        #expect(sda2.size == 1_046_528 * 512)
        #expect(sda2.logicalSectorSize == 4096)
        #expect(sda2.physicalSectorSize == 4096)
        #expect(sda2.readOnly)
        #expect(sda2.path == "\(host.dev)/sda2")
        #expect(sda2.deviceNumber == DeviceNumber(major: 8, minor: 2))
        #expect(sda2.holders == ["dm-0"])
        let sda = try host.probe.device(named: "sda")
        #expect(sda.partition == nil)
        #expect(!sda.readOnly)
        // Partitions are children, not holders.
        #expect(sda.holders.isEmpty)
    }

    @Test func deviceMapperNamesHoldersAndSlaves() throws {
        let host = try FabricatedSysfs.typicalHost()
        let lv = try host.probe.device(named: "dm-0")
        #expect(lv.dmName == "vg-home")
        #expect(lv.dmUUID?.hasPrefix("LVM-") == true)
        #expect(lv.holders == ["dm-1"])
        #expect(lv.slaves == ["sda2"])
        let crypt = try host.probe.device(named: "dm-1")
        #expect(crypt.dmName == "home crypt")
        #expect(crypt.slaves == ["dm-0"])
        #expect(crypt.loopBackingFile == nil)
    }

    @Test func mountpointsMatchByNumberOrBySourceNode() throws {
        let host = try FabricatedSysfs.typicalHost()
        let byName = Dictionary(uniqueKeysWithValues: try host.probe.devices().map { ($0.name, $0.mountpoints) })
        #expect(byName["sda1"] == ["/"])
        // Anonymous numbers: matched through /dev/mapper/NAME and /dev/NAME.
        #expect(byName["dm-1"] == ["/home"])
        #expect(byName["sdb"] == ["/srv"])
        #expect(byName["sda"] == [])
        #expect(byName["dm-0"] == [])
    }

    @Test func stackAboveADiskFollowsPartitionsAndHoldersTransitively() throws {
        let host = try FabricatedSysfs.typicalHost()
        #expect(Set(host.probe.stack(above: "sda")) == ["sda1", "sda2", "dm-0", "dm-1"])
        #expect(host.probe.stack(above: "sda2") == ["dm-0", "dm-1"])
        #expect(host.probe.stack(above: "dm-1") == [])
        #expect(host.probe.stack(above: "sdb") == [])
    }

    @Test func filesystemsMountedFromADiskIncludePartitionsAndStackedDevices() throws {
        let host = try FabricatedSysfs.typicalHost()
        let table = try MountTable.read(from: host.mountinfo)
        func mounted(_ name: String) -> [String] {
            table.filesystemsMounted(fromDeviceNamed: name, probe: host.probe).map(\.mountPoint)
        }
        #expect(mounted("sda") == ["/", "/home"])
        #expect(mounted("sda2") == ["/home"])
        #expect(mounted("dm-0") == ["/home"])
        #expect(mounted("sdb") == ["/srv"])
        #expect(mounted("loop0") == [])
    }

    @Test func aPartitionWhoseSysfsEntryVanishedIsLeftOut() throws {
        let host = try FabricatedSysfs.typicalHost()
        // A link whose target is gone: what a listing sees when a partition is
        // deleted between readdir and reading its attributes.
        try FileManager.default.createSymbolicLink(atPath: "\(host.sysfs)/class/block/sda3",
                                                   withDestinationPath: "../../devices/gone/sda3")
        #expect(try !host.probe.devices().map(\.name).contains("sda3"))
    }

    @Test func unparsableAttributesNameTheFile() throws {
        let host = try FabricatedSysfs()
        try host.add("vdz", dev: "252:0", sectors: 0, attributes: ["size": "lots"])
        try host.write("", to: host.mountinfo)
        #expect {
            try host.probe.devices()
        } throws: { error in
            (error as? DeviceError)?.code == .unparsable
                && "\(error)".hasSuffix("/sys/class/block/vdz/size: expected a number, found \"lots\"")
        }
    }
}
