import Foundation
import Testing
@testable import BlockDevices

/// The `ringback devices` presentation: sizes, the table, hiding unattached
/// loops, and the JSON key set.
struct DeviceTableTests {
    static let disk = BlockDeviceInfo(
        name: "loop3", path: "/dev/loop3", major: 7, minor: 3, size: 64 << 20,
        logicalSectorSize: 4096, physicalSectorSize: 4096, kind: .loop,
        loopBackingFile: "/tmp/disk.img", holders: [])
    static let part = BlockDeviceInfo(
        name: "loop3p1", path: "/dev/loop3p1", major: 259, minor: 0, size: 10 << 20,
        logicalSectorSize: 4096, physicalSectorSize: 4096, kind: .partition,
        partition: PartitionInfo(number: 1, start: 1 << 20, parent: "loop3"),
        fsType: "ext4", fsUUID: "0b1d7c8e-2d4b-4f5e-9a7e-3c1f2e6d5a40", fsLabel: "data",
        mountpoints: ["/mnt/a", "/mnt/b"])
    static let unattached = BlockDeviceInfo(
        name: "loop0", path: "/dev/loop0", major: 7, minor: 0, size: 0,
        logicalSectorSize: 512, physicalSectorSize: 512, kind: .loop)

    static let sizes: [(UInt64, String)] = [
        (0, "0B"), (512, "512B"), (1023, "1023B"), (1024, "1.0K"), (1536, "1.5K"),
        (64 << 20, "64.0M"), (3 << 29, "1.5G"), (1023 * 1024 + 1000, "1.0M"), (1 << 40, "1.0T"),
        (UInt64.max, "16.0E"),
    ]

    @Test(arguments: sizes)
    func humanSizes(bytes: UInt64, text: String) {
        #expect(DeviceTable.humanSize(bytes) == text)
    }

    @Test func rendersAnAlignedTableWithDashesForAbsentValues() {
        let out = DeviceTable.render([Self.disk, Self.part])
        let lines = out.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(lines.count == 4 && lines[3].isEmpty)
        #expect(lines[0] == "NAME      SIZE  LOG-SEC  PHY-SEC  KIND       LV  LV-TYPE    START  FSTYPE  LABEL  UUID                                  MOUNTPOINTS    HOLDERS")
        #expect(lines[1] == "loop3    64.0M     4096     4096  loop       -   -              -  -       -      -                                     -              -")
        #expect(lines[2] == "loop3p1  10.0M     4096     4096  partition  -   -        1048576  ext4    data   0b1d7c8e-2d4b-4f5e-9a7e-3c1f2e6d5a40  /mnt/a,/mnt/b  -")
    }

    /// An LV's row says its VG/LV and type.
    @Test func anLVRowHasItsVolumeAndType() throws {
        let lv = try #require(try LVSReport.parse(LVMCapture.one).first)
        let d = BlockDeviceInfo(name: "dm-1", path: "/dev/dm-1", major: 253, minor: 1, size: 8 << 20,
                                logicalSectorSize: 512, physicalSectorSize: 512, kind: .lvm,
                                dmName: "my--vg-data--lv", dmUUID: lv.dmUUID, holders: [], logicalVolume: lv)
        let lines = DeviceTable.render([Self.disk, d]).split(separator: "\n")
        #expect(lines[2] == "dm-1    8.0M      512      512  lvm   my-vg/data-lv  linear       -  -       -      -     -            -")
    }

    @Test func hidesUnattachedLoopsUnlessAll() {
        let all = [Self.unattached, Self.disk, Self.part]
        #expect(DeviceTable.visible(all, all: false).map(\.name) == ["loop3", "loop3p1"])
        #expect(DeviceTable.visible(all, all: true).map(\.name) == ["loop0", "loop3", "loop3p1"])
    }

    @Test func jsonHasTheSameKeysForEveryDeviceAndRoundTrips() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let data = try encoder.encode([Self.unattached, Self.part])
        let objects = try #require(try JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        let keys = objects.map { Set($0.keys) }
        #expect(keys[0] == keys[1])
        #expect(keys[0] == ["name", "path", "major", "minor", "size", "logicalSectorSize", "physicalSectorSize",
                            "kind", "readOnly", "partition", "loopBackingFile", "dmName", "dmUUID",
                            "fsType", "fsUUID", "fsLabel", "mountpoints", "holders", "slaves",
                            "logicalVolume", "lvmLayer"])
        #expect(objects[0]["fsType"] is NSNull)
        #expect(objects[1]["size"] as? Int == 10 << 20)
        #expect((objects[1]["partition"] as? [String: Any])?["start"] as? Int == 1 << 20)
        #expect(objects[1]["kind"] as? String == "partition")
        let decoded = try JSONDecoder().decode([BlockDeviceInfo].self, from: data)
        #expect(decoded == [Self.unattached, Self.part])
    }
}
