import ControlProtocol
import Foundation
import Testing
import TestSupport

extension GuestTests {
    /// The harness itself, in the guest: an LV backs up through the direct CLI
    /// path and qemu-img judges the image; the daemon starts and tracks writes
    /// through the guest's tracefs.
    @Suite struct Smoke {
        @Test func fullBackupOfALinearLV() throws {
            let dir = try TemporaryDirectory()
            let lv = try LVMGuest.linear(size: 64 << 20)
            defer { try? lv.remove() }
            #expect(try lv.size() == 64 << 20)
            try lv.fillRandom()

            let image = dir.file("lv.qcow2")
            let r = try RingbackBinary.run(["backup", lv.path, "--to", image])
            #expect(r.succeeded, "ringback backup \(lv.path): \(r.stderr)\(r.stdout)")
            try QemuImg.check(image)
            #expect(try QemuImg.identical(image, lv.path, formatB: "raw"), "the image differs from \(lv.path)")
        }

        /// ringbackd in the guest: its socket answers, tracefs is there, and a
        /// bitmap on a virtio disk counts the writes made through an LV on it.
        @Test func daemonTracksAWriteThroughTheGuestTracefs() throws {
            let dir = try TemporaryDirectory()
            let lv = try LVMGuest.linear(size: 4 << 20)
            defer { try? lv.remove() }
            let daemon = try DaemonProcess(in: dir)
            defer { daemon.stop() }
            // The LV's first extent is on the first PV; which one holds it is LVM's choice.
            let pv = try Shell.check(["lvs", "--noheadings", "-o", "devices", lv.fullName])
                .trimmingCharacters(in: .whitespacesAndNewlines).components(separatedBy: "(").first ?? ""
            #expect(LVMGuest.disks.contains(pv), "lvs says \(lv.fullName) is on '\(pv)'")

            var r = try daemon.ringback(["bitmap", "add", pv, "probe"])
            #expect(r.succeeded, "\(r.stderr)\(daemon.log())")
            try lv.write([UInt8](repeating: 0x5a, count: 4096), at: 0)
            try QMPClient(path: daemon.socket).execute("x-tracker-barrier", ["node": .string(pv)])
            r = try daemon.ringback(["bitmap", "list", pv, "--json"])
            #expect(r.succeeded, "\(r.stderr)")
            let count = try JSONValue.parse(Data(r.stdout.utf8)).arrayValue?.first { $0["name"]?.stringValue == "probe" }?["count"]?.intValue
            #expect((count ?? 0) > 0, "bitmap 'probe' on \(pv) after a write through \(lv.path): \(r.stdout)")
            r = try daemon.ringback(["bitmap", "remove", pv, "probe"])
            #expect(r.succeeded, "\(r.stderr)")
        }
    }
}
