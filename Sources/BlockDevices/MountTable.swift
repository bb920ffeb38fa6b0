import BlockIO

/// One mount: a line of /proc/self/mountinfo (proc(5), "/proc/pid/mountinfo").
public struct MountEntry: Hashable, Sendable {
    /// Unique id of the mount.
    public var mountID: Int
    /// Id of the mount it sits on (itself for the root of the namespace).
    public var parentID: Int
    /// st_dev of files in this filesystem. For most filesystems it is the block
    /// device's dev_t; btrfs and others report an anonymous 0:N instead.
    public var device: DeviceNumber
    /// The directory of the filesystem that forms the root of this mount
    /// (not "/" for bind mounts and btrfs subvolumes).
    public var root: String
    /// Where it is mounted, relative to this process's root.
    public var mountPoint: String
    /// Per-mount options ("rw,relatime").
    public var mountOptions: String
    /// Filesystem type, with its subtype if any ("ext4", "fuse.sshfs").
    public var fsType: String
    /// What was mounted: a device path, or "none", "tmpfs", a server path...
    public var source: String
    /// Per-superblock options.
    public var superOptions: String

    public init(mountID: Int, parentID: Int, device: DeviceNumber, root: String, mountPoint: String,
                mountOptions: String, fsType: String, source: String, superOptions: String) {
        self.mountID = mountID
        self.parentID = parentID
        self.device = device
        self.root = root
        self.mountPoint = mountPoint
        self.mountOptions = mountOptions
        self.fsType = fsType
        self.source = source
        self.superOptions = superOptions
    }
}

/// The mounts visible to this process, parsed from /proc/self/mountinfo, and
/// the questions backup and restore ask of them: is this device mounted, which
/// filesystem holds this path.
public struct MountTable: Sendable {
    /// The mounts in the order the kernel lists them (a later mount on the same
    /// mount point hides an earlier one).
    public let entries: [MountEntry]
    /// The file the table was read from, for messages.
    public let origin: String

    /// /proc/self/mountinfo.
    public static let defaultPath = "/proc/self/mountinfo"

    public init(entries: [MountEntry], origin: String = "mount table") {
        self.entries = entries
        self.origin = origin
    }

    /// Parses mountinfo text. `origin` names it in errors.
    public init(parsing text: String, origin: String = MountTable.defaultPath) throws(DeviceError) {
        var entries: [MountEntry] = []
        for (index, line) in text.split(separator: "\n").enumerated() where !line.isEmpty {
            entries.append(try MountTable.parseLine(line, number: index + 1, origin: origin))
        }
        self.init(entries: entries, origin: origin)
    }

    /// This process's mounts, read now.
    public static func current() throws -> MountTable { try read(from: defaultPath) }

    static func read(from path: String) throws -> MountTable {
        try MountTable(parsing: try Sys.readFile(path), origin: path)
    }

    /// The mounts whose filesystem reports `device` as its st_dev.
    public func mounts(of device: DeviceNumber) -> [MountEntry] {
        entries.filter { $0.device == device }
    }

    /// The mount of the filesystem holding `path`. A path that does not exist
    /// yet (a backup target about to be created) is answered for the nearest
    /// ancestor that does.
    ///
    /// Among the mounts whose mount point contains the canonical path, one whose
    /// device equals the path's st_dev wins; otherwise (btrfs subvolumes report
    /// anonymous st_dev values) the deepest mount point, and of equal ones the
    /// last listed, which is the one on top.
    public func mount(containing path: String) throws -> MountEntry {
        var existing = path
        var missing: [String] = []
        while existing != "/" && existing != "." && !Sys.exists(existing) {
            missing.insert(lastComponent(of: existing), at: 0)
            existing = parentDirectory(of: existing)
        }
        let status = try Sys.status(existing, operation: "find the filesystem holding")
        var canonical = try Sys.realpath(existing)
        for component in missing {
            canonical += canonical.hasSuffix("/") ? component : "/" + component
        }
        let containing = entries.enumerated().filter { MountTable.isWithin(canonical, $0.element.mountPoint) }
        let best = containing.max { a, b in
            let keyA = (a.element.device == status.device ? 1 : 0, a.element.mountPoint.utf8.count, a.offset)
            let keyB = (b.element.device == status.device ? 1 : 0, b.element.mountPoint.utf8.count, b.offset)
            return keyA < keyB
        }
        guard let best else { throw DeviceError.noMount(path, table: origin) }
        return best.element
    }

    /// True when `device`, one of its partitions, or a device built on it (a dm
    /// or md holder, transitively) has a mounted filesystem.
    public func isMounted(device: BlockDeviceInfo) -> Bool {
        !filesystemsMounted(fromDeviceNamed: device.name, probe: DeviceProbe()).isEmpty
    }

    /// The mounts of filesystems that live on the device at `devicePath`: on the
    /// device itself, on any partition of it when it is a whole disk, and on any
    /// device stacked on those (LVM, dm-crypt, md). Backup refuses a target
    /// inside one of these; restore refuses a device with any.
    public func filesystemsMounted(from devicePath: String) throws -> [MountEntry] {
        let probe = DeviceProbe()
        return filesystemsMounted(fromDeviceNamed: try probe.name(at: devicePath), probe: probe)
    }

    /// `filesystemsMounted(from:)` by kernel name against a given sysfs.
    func filesystemsMounted(fromDeviceNamed name: String, probe: DeviceProbe) -> [MountEntry] {
        let names = [name] + probe.stack(above: name)
        // A device removed while we looked has no number and no mounts.
        let numbers = Set(names.compactMap { try? probe.deviceNumber(of: $0) })
        return MountIndex(self).entries(on: numbers, nodes: names.flatMap { probe.nodePaths(of: $0) })
    }

    /// True when `path` is `mountPoint` or below it (both canonical).
    static func isWithin(_ path: String, _ mountPoint: String) -> Bool {
        mountPoint == "/" || path == mountPoint || path.hasPrefix(mountPoint + "/")
    }

    // MARK: - Parsing

    /// Parses one line:
    /// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
    /// — six fixed fields, zero or more optional fields ended by "-", then
    /// filesystem type, source and super options (proc(5)).
    static func parseLine(_ line: Substring, number: Int, origin: String) throws(DeviceError) -> MountEntry {
        func fail(_ why: String) -> DeviceError { .unparsable(origin, "line \(number): \(why)") }
        // Split on single spaces: the kernel escapes spaces inside fields, and an
        // empty source must stay an empty field.
        let fields = line.split(separator: " ", omittingEmptySubsequences: false)
        guard fields.count >= 6 + 1 + 2 else { throw fail("expected at least 9 fields, found \(fields.count)") }
        guard let separator = fields[6...].firstIndex(of: "-") else { throw fail("no \"-\" separator") }
        guard fields.count - separator - 1 >= 2 else { throw fail("fewer than 2 fields after \"-\"") }
        guard let mountID = Int(fields[0]), let parentID = Int(fields[1]) else {
            throw fail("mount ids \"\(fields[0])\" \"\(fields[1])\" are not numbers")
        }
        guard let device = DeviceNumber(fields[2]) else { throw fail("\"\(fields[2])\" is not MAJOR:MINOR") }
        return MountEntry(
            mountID: mountID, parentID: parentID, device: device,
            root: unescape(fields[3]), mountPoint: unescape(fields[4]), mountOptions: String(fields[5]),
            fsType: unescape(fields[separator + 1]), source: unescape(fields[separator + 2]),
            superOptions: separator + 3 < fields.count ? unescape(fields[separator + 3]) : "")
    }

    /// Undoes the kernel's escaping of space, tab, newline and backslash as
    /// three octal digits (`\040`, `\011`, `\012`, `\134`; fs/proc_namespace.c
    /// uses mangle(), i.e. seq_escape with " \t\n\\").
    static func unescape(_ field: Substring) -> String {
        let bytes = Array(field.utf8)
        guard bytes.contains(UInt8(ascii: "\\")) else { return String(field) }
        func octal(_ b: UInt8) -> UInt8? { (UInt8(ascii: "0")...UInt8(ascii: "7")).contains(b) ? b - UInt8(ascii: "0") : nil }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = 0
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "\\"), i + 3 < bytes.count,
               let a = octal(bytes[i + 1]), let b = octal(bytes[i + 2]), let c = octal(bytes[i + 3]), a <= 3 {
                out.append(a << 6 | b << 3 | c)
                i += 4
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// A mount table indexed for matching devices: by major:minor, and by the
/// canonical path of the mount source, because btrfs (and any filesystem on an
/// anonymous superblock) reports 0:N in mountinfo rather than the disk's dev_t.
struct MountIndex {
    private let table: MountTable
    private let canonicalSources: [String]

    init(_ table: MountTable) {
        self.table = table
        canonicalSources = table.entries.map { entry in
            guard entry.source.hasPrefix("/") else { return entry.source }
            return (try? Sys.realpath(entry.source)) ?? entry.source
        }
    }

    /// Mounts whose device is one of `numbers` or whose source is one of the
    /// device node paths `nodes`, without repeating a mount.
    func entries(on numbers: Set<DeviceNumber>, nodes: [String]) -> [MountEntry] {
        let nodeSet = Set(nodes + nodes.compactMap { try? Sys.realpath($0) })
        return table.entries.indices.filter { i in
            numbers.contains(table.entries[i].device) || nodeSet.contains(canonicalSources[i])
        }.map { table.entries[$0] }
    }
}
