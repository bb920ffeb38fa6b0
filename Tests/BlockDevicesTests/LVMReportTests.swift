import Foundation
import PropertyBased
import Testing
@testable import BlockDevices

/// The lvs JSON report and LVM's names, on output captured from real LVM
/// (LVMCapture); resolving against real LVs is tested in the LVM VM
/// (Tests/LVMTests).
struct LVMReportTests {
    func volumes() throws -> [String: LogicalVolume] {
        Dictionary(uniqueKeysWithValues: try LVSReport.parse(LVMCapture.all).map { ("\($0.vg)/\($0.name)", $0) })
    }

    @Test func everyLVOfTheCaptureWithItsType() throws {
        let lvs = try volumes()
        #expect(lvs.count == 10)
        let types = lvs.mapValues(\.segmentType)
        #expect(types == [
            "my-vg/data-lv": .linear, "vg0/idle": .linear, "vg0/[lvol0_pmspare]": .linear, "vg0/pool": .thinPool,
            "vg0/[pool_tdata]": .linear, "vg0/[pool_tmeta]": .linear, "vg0/root": .linear,
            "vg0/root-snap": .snapshot, "vg0/thin1": .thin, "vg0/thin1-snap": .thin,
        ])
    }

    @Test func aLinearLV() throws {
        let lv = try #require(try volumes()["my-vg/data-lv"])
        #expect(lv.size == 8 << 20)
        #expect(lv.fullName == "my-vg/data-lv")
        #expect(lv.dmPath == "/dev/mapper/my--vg-data--lv")
        #expect(lv.kernelDevice == DeviceNumber(major: 253, minor: 1))
        #expect(lv.isActive && !lv.isHidden && lv.pool == nil && lv.origin == nil && lv.thinID == nil && lv.cowSize == nil)
        // The dm UUID the kernel shows for its device (sysfs dm/uuid in the capture).
        #expect(LVMCapture.sysfs.contains("dm-1 253:1 my--vg-data--lv \(lv.dmUUID)\n"))
    }

    /// A classic snapshot reads as big as its origin; lv_size is its COW space.
    @Test func aClassicSnapshot() throws {
        let lv = try #require(try volumes()["vg0/root-snap"])
        #expect(lv.segmentType == .snapshot && lv.segmentTypeName == "linear")
        #expect(lv.size == 8 << 20)
        #expect(lv.cowSize == 4 << 20)
        #expect(lv.origin == "root")
        #expect(lv.dataPercent == 0)
        #expect(lv.isActive && !lv.isInvalidSnapshot)
        #expect(LVMCapture.sysfs.contains("dm-4 253:4 vg0-root--snap \(lv.dmUUID)\n"))
        // Its origin is a plain linear LV whose size is its own.
        #expect(try volumes()["vg0/root"]?.size == 8 << 20)
    }

    @Test func aThinPoolAThinLVAndAThinSnapshot() throws {
        let lvs = try volumes()
        let pool = try #require(lvs["vg0/pool"]), thin = try #require(lvs["vg0/thin1"]), snap = try #require(lvs["vg0/thin1-snap"])
        #expect(pool.size == 32 << 20 && pool.dataPercent == 0)
        #expect(thin.size == 16 << 20 && thin.pool == "pool" && thin.thinID == 1 && thin.origin == nil)
        #expect(snap.pool == "pool" && snap.thinID == 2 && snap.origin == "thin1")
        // lvcreate -s of a thin LV sets the activation-skip flag: inactive, no device.
        #expect(!snap.isActive && snap.skipsActivation && snap.kernelDevice == nil)
    }

    @Test func inactiveAndHiddenLVs() throws {
        let lvs = try volumes()
        let idle = try #require(lvs["vg0/idle"])
        #expect(!idle.isActive && !idle.skipsActivation && idle.kernelDevice == nil)
        let meta = try #require(lvs["vg0/[pool_tmeta]"])
        #expect(meta.isHidden && meta.fullName == "vg0/pool_tmeta" && meta.unbracketedName == "pool_tmeta")
        #expect(meta.dmPath == "/dev/mapper/vg0-pool_tmeta")
    }

    @Test func oneLVAndAnEmptyReport() throws {
        #expect(try LVSReport.parse(LVMCapture.one).map(\.fullName) == ["my-vg/data-lv"])
        #expect(try LVSReport.parse(LVMCapture.empty).isEmpty)
    }

    @Test(arguments: [
        ("not json", "not the JSON"),
        (#"{"report": [{"lv": [{"lv_name": "x"}]}]}"#, "no field vg_name"),
        (LVMCapture.one.replacingOccurrences(of: #""lv_size":"8388608""#, with: #""lv_size":"8.00m""#),
         #"lv_size of my-vg/data-lv is "8.00m", not a number of bytes"#),
        (LVMCapture.one.replacingOccurrences(of: #""lv_size":"8388608""#, with: #""lv_size":8388608"#), "unexpected value"),
    ])
    func malformedReportsSayWhatIsWrong(json: String, says: String) {
        #expect {
            try LVSReport.parse(json)
        } throws: { error in
            guard let e = error as? LVMError else { return false }
            return e.code == .unparsable && e.description.contains(says)
        }
    }

    /// The report's own fields in ringback's request, in its order.
    @Test func theArgumentsAskForBytesInJSON() {
        #expect(LVSReport.arguments.prefix(5) == ["--reportformat", "json", "--units", "b", "--nosuffix"])
        #expect(LVSReport.arguments.last == LVSReport.fields.joined(separator: ","))
    }

    @Test func inactiveLVsSayHowToActivateThem() throws {
        let lvm = LVM(sysfs: "/nonexistent", lvs: nil)
        let lvs = try volumes()
        #expect {
            try lvm.node(of: lvs["vg0/idle"]!)
        } throws: { error in
            (error as? LVMError)?.description == "cannot use logical volume vg0/idle: it is not active (lvchange -ay vg0/idle)"
        }
        #expect {
            try lvm.node(of: lvs["vg0/thin1-snap"]!)
        } throws: { error in
            (error as? LVMError)?.description.contains("lvchange -ay -K vg0/thin1-snap") == true
        }
    }

    /// Without lvs, VG/LV cannot mean anything and says so; a path is left
    /// to be what it is (opening a missing one fails as any missing path).
    @Test func withoutTheLVMTools() throws {
        let lvm = LVM(sysfs: "/sys", lvs: nil)
        #expect {
            try lvm.node(for: "vg0/root")
        } throws: { error in
            (error as? LVMError)?.description == "cannot use logical volume vg0/root: the LVM tools are not installed (no lvs in PATH, /usr/sbin or /sbin; install lvm2)"
        }
        #expect(try lvm.node(for: "/dev/vg0/root") == nil)
        #expect(try lvm.node(for: "/dev/mapper/vg0-root") == nil)
        #expect(try lvm.devicePath(for: "/dev/mapper/vg0-root") == "/dev/mapper/vg0-root")
    }

    // MARK: - Names

    @Test(arguments: [
        ("vg0/root", "vg0", "root"), ("my-vg/data-lv", "my-vg", "data-lv"), ("a+b/c_d.e", "a+b", "c_d.e"),
    ])
    func vgSlashLV(name: String, vg: String, lv: String) {
        let split = LVMName.volumeGroupAndVolume(name)
        #expect(split?.vg == vg && split?.lv == lv)
    }

    @Test(arguments: ["/dev/vg0/root", "./vg0/root", "vg0", "vg0/root/x", "vg0/", "/vg0", "-vg/lv", "vg/..", "vg/a b", "../x"])
    func notVGSlashLV(name: String) {
        #expect(LVMName.volumeGroupAndVolume(name) == nil)
    }

    @Test func devPaths() {
        #expect(LVMName.devPath("/dev/vg0/root").map { [$0.vg, $0.lv] } == ["vg0", "root"])
        #expect(LVMName.devPath("/dev/mapper/vg0-root") == nil)
        #expect(LVMName.devPath("/dev/sdb") == nil)
        #expect(LVMName.devPath("/dev/disk/by-id/x") == nil)
        #expect(LVMName.devPath("/tmp/vg0/root") == nil)
    }

    /// Every dm name of the capture.
    @Test(arguments: [
        ("vg0-root", "vg0", "root", nil), ("my--vg-data--lv", "my-vg", "data-lv", nil),
        ("vg0-root-real", "vg0", "root", "real"), ("vg0-root--snap-cow", "vg0", "root-snap", "cow"),
        ("vg0-pool-tpool", "vg0", "pool", "tpool"), ("vg0-pool_tdata", "vg0", "pool_tdata", nil),
    ] as [(String, String, String, String?)])
    func mapperNames(name: String, vg: String, lv: String, layer: String?) {
        let split = LVMName.splitMapperName(name)
        #expect(split?.vg == vg && split?.lv == lv && split?.layer == layer)
        #expect(LVMName.mapperName(vg: vg, lv: lv, layer: layer) == name)
    }

    @Test(arguments: ["sda", "crypt", "-vg-lv", "vg-", "a-b-c-d", "vg--lv"])
    func notLVMMapperNames(name: String) {
        #expect(LVMName.splitMapperName(name) == nil)
    }

    /// Escaping and splitting are inverse for every pair of valid names,
    /// dashes anywhere but first.
    @Test func mapperNamesRoundTrip() async {
        let alphabet = Array("a-b_.+9-")
        let name = Gen.int(in: 0...(alphabet.count - 1)).array(of: 1...8).map { idx in
            String(idx.map { alphabet[$0] })
        }
        await propertyCheck(count: 500, input: name, name) { vg, lv in
            guard LVMName.isValid(vg), LVMName.isValid(lv) else { return }
            let split = LVMName.splitMapperName(LVMName.mapperName(vg: vg, lv: lv))
            #expect(split?.vg == vg && split?.lv == lv && split?.layer == nil, "\(vg) / \(lv)")
        }
    }

    // MARK: - ringback devices

    /// The capture's dm devices as DeviceProbe describes them, given their LVs.
    @Test func devicesGetTheirLVsAndLayers() throws {
        var devices = LVMCapture.sysfs.split(separator: "\n").map { line -> BlockDeviceInfo in
            let f = line.split(separator: " ").map(String.init)
            let dev = DeviceNumber(f[1])!
            return BlockDeviceInfo(name: f[0], path: "/dev/" + f[0], major: dev.major, minor: dev.minor, size: 0,
                                   logicalSectorSize: 512, physicalSectorSize: 512, kind: .lvm, dmName: f[2], dmUUID: f[3])
        }
        DeviceProbe.attach(try LVSReport.parse(LVMCapture.all), to: &devices)
        let cells = Dictionary(uniqueKeysWithValues: devices.map { ($0.dmName!, DeviceTable.logicalVolumeCells($0)) })
        #expect(cells["vg0-root"]! == ("vg0/root", "linear"))
        #expect(cells["my--vg-data--lv"]! == ("my-vg/data-lv", "linear"))
        #expect(cells["vg0-root-real"]! == ("vg0/root", "[real]"))
        #expect(cells["vg0-root--snap"]! == ("vg0/root-snap", "snapshot"))
        #expect(cells["vg0-root--snap-cow"]! == ("vg0/root-snap", "[cow]"))
        #expect(cells["vg0-pool"]! == ("vg0/pool", "thin-pool"))
        #expect(cells["vg0-pool-tpool"]! == ("vg0/pool", "[tpool]"))
        #expect(cells["vg0-pool_tmeta"]! == ("vg0/[pool_tmeta]", "linear"))
        #expect(cells["vg0-thin1"]! == ("vg0/thin1", "thin"))
        #expect(devices.first { $0.dmName == "vg0-thin1" }?.logicalVolume?.thinID == 1)
    }

    /// Without lvs's report the VG and LV still come from the dm name.
    @Test func withoutTheReportTheNameStillSaysVGAndLV() {
        let d = BlockDeviceInfo(name: "dm-3", path: "/dev/dm-3", major: 253, minor: 3, size: 0,
                                logicalSectorSize: 512, physicalSectorSize: 512, kind: .lvm,
                                dmName: "vg0-root--snap-cow", dmUUID: "LVM-x-cow")
        #expect(DeviceTable.logicalVolumeCells(d) == ("vg0/root-snap", "[cow]"))
    }
}
