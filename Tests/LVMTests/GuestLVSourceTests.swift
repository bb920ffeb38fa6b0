import BlockDevices
import ControlProtocol
import Foundation
import Testing
import TestSupport

extension GuestTests {
    /// LV sources against real LVM: every name of an LV leads to its dm node,
    /// lvs's details are right, the failures say why, `ringback devices` shows
    /// LVs with their VG and type, and ringbackd keys an LV by one name
    /// whatever name it is given.
    @Suite struct LVSources {
        /// The dm device behind a node, by stat.
        func deviceNumber(_ path: String) throws -> DeviceNumber {
            var st = stat()
            guard stat(path, &st) == 0 else { throw GuestError("cannot stat \(path): errno \(errno)") }
            return DeviceNumber(rawValue: UInt64(st.st_rdev))
        }

        /// Names with dashes, so that the mapper name's "--" escaping is in play.
        @Test func everyNameOfAnLVLeadsToItsNode() throws {
            let lv = try LVMGuest.linear(size: 8 << 20, name: LVMGuest.uniqueName("src-lv-"))
            defer { try? lv.remove() }
            let lvm = LVM()
            let dev = try deviceNumber(lv.mapperPath)
            let kernelName = URL(fileURLWithPath: "/sys/dev/block/\(dev)").resolvingSymlinksInPath().lastPathComponent
            #expect(kernelName.hasPrefix("dm-"))

            for name in [lv.fullName, lv.path, lv.mapperPath, "/dev/" + kernelName] {
                #expect(try lvm.node(for: name) == lv.mapperPath, "\(name)")
            }
            let details = try #require(try lvm.volume(named: lv.fullName))
            #expect(details.vg == LVMGuest.vg && details.name == lv.name)
            #expect(details.size == 8 << 20 && details.segmentType == .linear && details.isActive)
            #expect(details.kernelDevice == dev)
            #expect(details.dmPath == lv.mapperPath)
            let sysfsUUID = try String(contentsOfFile: "/sys/dev/block/\(dev)/dm/uuid", encoding: .utf8)
            #expect(sysfsUUID.trimmingCharacters(in: .whitespacesAndNewlines) == details.dmUUID)

            // Not LVs: a disk, a file, a missing path outside any VG.
            #expect(try lvm.node(for: "/dev/vda") == nil)
            #expect(try lvm.node(for: "/etc/hostname") == nil)
            #expect(try lvm.node(for: "/dev/nosuchvg/x") == nil)
        }

        @Test func snapshotsAndThinVolumesWithTheirDetails() throws {
            let origin = try LVMGuest.linear(size: 8 << 20)
            let snap = try LVMGuest.snapshot(of: origin, cowSize: 4 << 20)
            let pool = try LVMGuest.thinPool(size: 16 << 20)
            let thin = try LVMGuest.thin(in: pool, virtualSize: 32 << 20)
            let thinSnap = try LVMGuest.snapshot(of: thin)
            defer { try? snap.remove(); try? origin.remove(); try? thinSnap.remove(); try? thin.remove(); try? pool.remove() }
            let lvm = LVM()

            let s = try #require(try lvm.volume(named: snap.path))
            #expect(s.segmentType == .snapshot && s.origin == origin.name)
            #expect(s.size == 8 << 20 && s.cowSize == 4 << 20)
            #expect(try lvm.node(for: snap.fullName) == snap.mapperPath)
            let t = try #require(try lvm.volume(named: thin.mapperPath))
            #expect(t.segmentType == .thin && t.pool == pool.name && t.size == 32 << 20 && t.thinID != nil)
            let ts = try #require(try lvm.volume(named: thinSnap.fullName))
            #expect(ts.segmentType == .thin && ts.origin == thin.name && ts.thinID != t.thinID && ts.isActive)
            let p = try #require(try lvm.volume(named: pool.fullName))
            #expect(p.segmentType == .thinPool)
            // What lvs shows must agree with the kernel: the snapshot reads as big as its origin.
            #expect(try snap.size() == s.size)
        }

        @Test func failuresSayWhy() throws {
            let idle = try LVMGuest.linear(size: 4 << 20)
            defer { try? idle.remove() }
            try LVMGuest.lvm(["lvchange", "-q", "-an", idle.fullName])
            let pool = try LVMGuest.thinPool(size: 8 << 20)
            let thin = try LVMGuest.thin(in: pool, virtualSize: 8 << 20)
            defer { try? thin.remove(); try? pool.remove() }
            // A thin snapshot as lvcreate makes it by default: activation skipped.
            let skipped = LVMGuest.uniqueName("skip")
            try LVMGuest.lvm(["lvcreate", "-q", "-s", "-n", skipped, thin.fullName])

            func error(_ name: String) -> String {
                let r = (try? RingbackBinary.run(["backup", name, "--to", "/tmp/never.qcow2"]))
                #expect(r?.succeeded == false, "ringback backup \(name) succeeded")
                return r?.stderr ?? ""
            }
            #expect(error("\(LVMGuest.vg)/nosuchlv").contains("cannot use logical volume \(LVMGuest.vg)/nosuchlv: volume group \(LVMGuest.vg) has no logical volume nosuchlv"))
            #expect(error("nosuchvg/lv").contains("cannot use logical volume nosuchvg/lv: volume group nosuchvg does not exist"))
            #expect(error(idle.fullName).contains("cannot use logical volume \(idle.fullName): it is not active (lvchange -ay \(idle.fullName))"))
            #expect(error(idle.path).contains("it is not active"), "the inactive LV's missing /dev link")
            #expect(error(idle.mapperPath).contains("it is not active"))
            #expect(error("\(LVMGuest.vg)/\(skipped)").contains("lvchange -ay -K \(LVMGuest.vg)/\(skipped)"))
            #expect(!FileManager.default.fileExists(atPath: "/tmp/never.qcow2"))
        }

        @Test func backupOfAnLVByEachName() throws {
            let dir = try TemporaryDirectory()
            let lv = try LVMGuest.linear(size: 8 << 20, name: LVMGuest.uniqueName("by-name-"))
            defer { try? lv.remove() }
            try lv.fillRandom()
            for (i, name) in [lv.fullName, lv.mapperPath].enumerated() {
                let image = dir.file("\(i).qcow2")
                let r = try RingbackBinary.run(["backup", name, "--to", image, "--json"])
                #expect(r.succeeded, "ringback backup \(name): \(r.stderr)")
                #expect(r.stdout.contains("\"device\":\"\\/dev\\/mapper\\/") || r.stdout.contains("\"device\":\"/dev/mapper/"), "\(r.stdout)")
                try QemuImg.check(image)
                #expect(try QemuImg.identical(image, lv.path, formatB: "raw"), "\(name)")
            }
        }

        @Test func devicesListsLVsWithTheirVGAndType() throws {
            let lin = try LVMGuest.linear(size: 4 << 20)
            let snap = try LVMGuest.snapshot(of: lin, cowSize: 4 << 20)
            let pool = try LVMGuest.thinPool(size: 8 << 20)
            let thin = try LVMGuest.thin(in: pool, virtualSize: 8 << 20)
            defer { try? snap.remove(); try? lin.remove(); try? thin.remove(); try? pool.remove() }

            let table = try RingbackBinary.run(["devices"])
            #expect(table.succeeded, "\(table.stderr)")
            #expect(table.stderr.isEmpty, "\(table.stderr)")
            let rows = table.stdout.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
            let header = try #require(rows.first)
            let lvColumn = try #require(header.firstIndex(of: "LV")), typeColumn = try #require(header.firstIndex(of: "LV-TYPE"))
            func types(_ lv: GuestLV) -> [String] { rows.filter { $0.count > typeColumn && $0[lvColumn] == lv.fullName }.map { $0[typeColumn] } }
            #expect(types(lin).sorted() == ["[real]", "linear"], "\(table.stdout)")
            #expect(types(snap).sorted() == ["[cow]", "snapshot"], "\(table.stdout)")
            #expect(types(thin) == ["thin"], "\(table.stdout)")
            #expect(types(pool).contains("thin-pool") && types(pool).contains("[tpool]"), "\(table.stdout)")

            let json = try RingbackBinary.run(["devices", "--json"])
            let devices = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [[String: Any]])
            let thinEntry = try #require(devices.first { $0["dmName"] as? String == String(thin.mapperPath.dropFirst(12)) })
            #expect(thinEntry["kind"] as? String == "lvm")
            let volume = try #require(thinEntry["logicalVolume"] as? [String: Any])
            #expect(volume["vg"] as? String == LVMGuest.vg && volume["name"] as? String == thin.name)
            #expect(volume["segmentType"] as? String == "thin" && volume["pool"] as? String == pool.name)
            #expect(volume["size"] as? Int == 8 << 20)
        }

        /// ringbackd takes any of an LV's names and keys it by one:
        /// /dev/mapper/VG-LV.
        @Test func theDaemonKnowsAnLVByAnyName() throws {
            let dir = try TemporaryDirectory()
            let lv = try LVMGuest.linear(size: 8 << 20, name: LVMGuest.uniqueName("d-lv"))
            defer { try? lv.remove() }
            try lv.fillRandom()
            let daemon = try DaemonProcess(in: dir)
            defer { daemon.stop() }
            let dev = try deviceNumber(lv.mapperPath)
            let kernelPath = "/dev/" + URL(fileURLWithPath: "/sys/dev/block/\(dev)").resolvingSymlinksInPath().lastPathComponent

            var r = try daemon.ringback(["bitmap", "add", lv.fullName, "b0"])
            #expect(r.succeeded, "\(r.stderr)\(daemon.log())")
            let block = try QMPClient(path: daemon.socket).execute("query-block")
            let devices = block.arrayValue?.compactMap { $0["device"]?.stringValue } ?? []
            #expect(devices == [lv.mapperPath], "\(block)")
            for name in [lv.path, lv.mapperPath, kernelPath, lv.fullName] {
                r = try daemon.ringback(["bitmap", "list", name, "--json"])
                #expect(r.succeeded && r.stdout.contains("\"b0\""), "bitmap list \(name): \(r.stdout)\(r.stderr)")
            }

            // A full backup through the daemon, named as VG/LV.
            let chain = dir.file("chain")
            try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)
            r = try daemon.ringback(["backup", lv.fullName, "--sync", "full", "--to", chain])
            #expect(r.succeeded, "\(r.stderr)\(daemon.log())")
            let images = try FileManager.default.contentsOfDirectory(atPath: chain).filter { $0.hasSuffix(".qcow2") }
            #expect(images.count == 1)
            if let image = images.first {
                try QemuImg.check(chain + "/" + image)
                #expect(try QemuImg.identical(chain + "/" + image, lv.path, formatB: "raw"))
            }

            r = try daemon.ringback(["bitmap", "remove", lv.path, "b0"])
            #expect(r.succeeded, "\(r.stderr)")
            let after = try QMPClient(path: daemon.socket).execute("query-block")
            #expect(after.arrayValue?.isEmpty == true, "removing the last bitmap stops the tracking: \(after)")
            // Errors name the LV and the reason.
            r = try daemon.ringback(["bitmap", "add", "\(LVMGuest.vg)/nosuchlv", "b1"])
            #expect(!r.succeeded && r.stderr.contains("volume group \(LVMGuest.vg) has no logical volume nosuchlv"), "\(r.stderr)")
        }
    }
}
