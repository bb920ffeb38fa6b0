import BlockIO
import Testing
@testable import BlockDevices

/// The mountinfo parser on literal text: the proc(5) example, escapes, optional
/// fields, and lines it must refuse.
struct MountinfoParserTests {
    @Test func parsesTheProcManPageExample() throws {
        let table = try MountTable(parsing: "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n")
        #expect(table.entries == [MountEntry(
            mountID: 36, parentID: 35, device: DeviceNumber(major: 98, minor: 0), root: "/mnt1",
            mountPoint: "/mnt2", mountOptions: "rw,noatime", fsType: "ext3", source: "/dev/root",
            superOptions: "rw,errors=continue")])
    }

    @Test func decodesOctalEscapesInPathsAndSources() throws {
        let text = #"""
        40 27 7:3 / /mnt/my\040disk rw,relatime shared:12 - ext4 /dev/loop3 rw
        41 27 0:50 /sub\134dir /srv/tab\011and\012newline rw - btrfs /dev/my\040img rw,subvol=/sub
        """#
        let table = try MountTable(parsing: text)
        #expect(table.entries.map(\.mountPoint) == ["/mnt/my disk", "/srv/tab\tand\nnewline"])
        #expect(table.entries.map(\.root) == ["/", "/sub\\dir"])
        #expect(table.entries.map(\.source) == ["/dev/loop3", "/dev/my img"])
    }

    @Test(arguments: [
        (#"plain"#, "plain"),
        (#"a\040b"#, "a b"),
        (#"\134"#, "\\"),
        (#"end\04"#, #"end\04"#),      // too short to be an escape: kept as is
        (#"\089"#, #"\089"#),          // not octal
        (#"\400"#, #"\400"#),          // above \377 cannot be a byte
        (#"\303\251t\303\251"#, "été"), // UTF-8 bytes escaped one by one
    ])
    func unescapes(escaped: String, expected: String) {
        #expect(MountTable.unescape(Substring(escaped)) == expected)
    }

    @Test func acceptsAnyNumberOfOptionalFieldsAndAnEmptySource() throws {
        let text = """
        1 0 8:1 / / rw - ext4 /dev/sda1 rw
        2 1 0:5 / /dev rw shared:2 master:1 propagate_from:1 unbindable - devtmpfs  rw,size=10k
        3 1 0:6 / /old rw - proc proc
        """
        let table = try MountTable(parsing: text)
        #expect(table.entries.count == 3)
        #expect(table.entries[1].fsType == "devtmpfs")
        #expect(table.entries[1].source == "")
        #expect(table.entries[1].superOptions == "rw,size=10k")
        // An old kernel without super options still parses.
        #expect(table.entries[2].superOptions == "")
        #expect(table.mounts(of: DeviceNumber(major: 8, minor: 1)).map(\.mountPoint) == ["/"])
        #expect(table.mounts(of: DeviceNumber(major: 8, minor: 2)).isEmpty)
    }

    @Test(arguments: [
        ("1 0 8:1 / / rw ext4 /dev/sda1 rw", "no \"-\" separator"),
        ("1 0 8:1 / / - ext4", "expected at least 9 fields"),
        ("x 0 8:1 / / rw - ext4 /dev/sda1 rw", "are not numbers"),
        ("1 0 8-1 / / rw - ext4 /dev/sda1 rw", "is not MAJOR:MINOR"),
        ("1 0 8:1 / / rw a b - ext4", "fewer than 2 fields after"),
    ])
    func refusesMalformedLinesNamingTheLine(line: String, why: String) {
        let text = "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n" + line + "\n"
        #expect {
            try MountTable(parsing: text, origin: "/proc/self/mountinfo")
        } throws: { error in
            guard let error = error as? DeviceError else { return false }
            return error.code == .unparsable && error.path == "/proc/self/mountinfo"
                && error.description.hasPrefix("cannot parse /proc/self/mountinfo: line 2: ")
                && error.description.contains(why)
        }
    }

    @Test func mountContainingPrefersTheDeepestMountPointThenTheLastListed() throws {
        // Real paths, literal table: "/" exists everywhere; the deeper mounts
        // are fabricated on /proc and /proc/self, which always exist.
        let text = """
        1 0 1:1 / / rw - ext4 /dev/a rw
        2 1 1:2 / /proc rw - proc first rw
        3 1 1:3 / /proc rw - proc second rw
        4 3 1:4 / /procfoo rw - ext4 /dev/b rw
        """
        let table = try MountTable(parsing: text)
        #expect(try table.mount(containing: "/proc/self").source == "second")
        #expect(try table.mount(containing: "/proc").source == "second")
        // "/procfoo" is not a prefix of "/proc/x" and vice versa.
        #expect(try table.mount(containing: "/proc/does/not/exist/yet").source == "second")
        #expect(try table.mount(containing: "/does-not-exist").source == "/dev/a")
    }

    @Test func mountContainingThrowsWhenNoMountHoldsThePath() throws {
        let table = try MountTable(parsing: "2 1 1:2 / /proc rw - proc proc rw\n", origin: "fake")
        #expect {
            try table.mount(containing: "/")
        } throws: { error in
            (error as? DeviceError)?.code == .noMount
                && "\(error)" == "cannot find the filesystem holding /: no mount point in fake contains it"
        }
    }

    @Test func isWithinComparesWholePathComponents() {
        #expect(MountTable.isWithin("/a/b", "/"))
        #expect(MountTable.isWithin("/a/b", "/a"))
        #expect(MountTable.isWithin("/a", "/a"))
        #expect(!MountTable.isWithin("/ab", "/a"))
        #expect(!MountTable.isWithin("/a", "/a/b"))
    }
}

/// Device numbers, path helpers and ordering.
struct DeviceNumberTests {
    @Test(arguments: [
        (UInt64(0x801), DeviceNumber(major: 8, minor: 1)),
        (UInt64(0x10302), DeviceNumber(major: 259, minor: 2)),
        (UInt64(0x700), DeviceNumber(major: 7, minor: 0)),
        // The largest major and minor glibc can encode, every bit of both used.
        (UInt64(0xffff_ffff_ffff_ffff), DeviceNumber(major: 0xffff_ffff, minor: 0xffff_ffff)),
        // Major 4096 and minor 1048575 exercise the high halves of each.
        (UInt64(0x1000_fff0_00ff), DeviceNumber(major: 4096, minor: 1_048_575)),
    ])
    func splitsGlibcDevT(raw: UInt64, expected: DeviceNumber) {
        #expect(DeviceNumber(rawValue: raw) == expected)
    }

    @Test func parsesMajorMinorText() {
        #expect(DeviceNumber("259:12") == DeviceNumber(major: 259, minor: 12))
        #expect(DeviceNumber("259:12")?.description == "259:12")
        #expect(DeviceNumber("259") == nil)
        #expect(DeviceNumber("a:1") == nil)
        #expect(DeviceNumber("1:2:3") == nil)
        #expect(DeviceNumber(":1") == nil)
    }

    @Test func naturalOrderCountsDigitRunsAsNumbers() {
        let names = ["sda10", "loop10", "dm-1", "sda", "loop2", "nvme0n1p10", "nvme0n1p2", "sda2", "loop02"]
        #expect(names.sorted(by: naturalOrder) ==
                ["dm-1", "loop2", "loop02", "loop10", "nvme0n1p2", "nvme0n1p10", "sda", "sda2", "sda10"])
        #expect(!naturalOrder("sda", "sda"))
    }

    @Test func pathComponents() {
        #expect(parentDirectory(of: "/a/b/c") == "/a/b")
        #expect(parentDirectory(of: "/a/b/") == "/a")
        #expect(parentDirectory(of: "/c") == "/")
        #expect(parentDirectory(of: "c") == ".")
        #expect(lastComponent(of: "/a/b/c") == "c")
        #expect(lastComponent(of: "/a/b/") == "b")
        #expect(lastComponent(of: "c") == "c")
    }
}
