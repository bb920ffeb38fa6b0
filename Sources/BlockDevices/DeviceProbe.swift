import BlockIO

/// Lists and describes block devices from sysfs (`/sys/class/block`), libblkid
/// and /proc/self/mountinfo — never from udev's /dev/disk/by-*, which minimal
/// hosts do not have.
///
/// Sizes and sector sizes come from sysfs rather than BLKGETSIZE64/BLKSSZGET so
/// that listing needs no open descriptor: an unattached loop device cannot even
/// be opened (ENXIO), and a non-root caller cannot open any.
public struct DeviceProbe: Sendable {
    /// Where sysfs is mounted; tests point it at a fabricated tree.
    let sysfs: String
    /// Where device nodes live (devtmpfs creates /dev/NAME without udev).
    let deviceDirectory: String
    /// The mount table to match major:minor against.
    let mountinfo: String
    /// Whether to open devices and run libblkid (off for fabricated trees).
    let probesFilesystems: Bool
    /// Where `devices()` asks for the details of LVM devices; nil: it does not.
    let lvm: LVM?

    /// A probe of this host's devices.
    public init() {
        self.init(sysfs: "/sys", deviceDirectory: "/dev", mountinfo: MountTable.defaultPath, lvm: LVM())
    }

    init(sysfs: String, deviceDirectory: String, mountinfo: String, probesFilesystems: Bool = true, lvm: LVM? = nil) {
        self.sysfs = sysfs
        self.deviceDirectory = deviceDirectory
        self.mountinfo = mountinfo
        self.probesFilesystems = probesFilesystems
        self.lvm = lvm
    }

    /// Every block device the kernel lists, unattached loop devices included,
    /// each whole disk followed by its partitions; LVM devices with their LV.
    /// `warn` hears why LV details are missing (lvs not installed or failing):
    /// the listing does not fail for it.
    public static func all(warn: (String) -> Void = { _ in }) throws -> [BlockDeviceInfo] {
        try DeviceProbe().devices(warn: warn)
    }

    /// The device whose node is `path` (symbolic links are followed, so
    /// /dev/mapper/NAME works). Throws `SystemError` when the path cannot be
    /// stat'ed and `DeviceError` when it is not a block device.
    public static func info(path: String) throws -> BlockDeviceInfo { try DeviceProbe().device(at: path) }

    /// Every block device the kernel lists; see `all()`.
    public func devices(warn: (String) -> Void = { _ in }) throws -> [BlockDeviceInfo] {
        let mounts = MountIndex(try MountTable.read(from: mountinfo))
        var result: [BlockDeviceInfo] = []
        for name in try Sys.listDirectory(classBlock) {
            do {
                result.append(try describe(name, mounts: mounts))
            } catch let error as SystemError where Sys.isMissing(error) {
                // Removed while we looked (a loop partition deleted, a dm device
                // torn down): it is not there any more, so it is not listed.
                continue
            }
        }
        if let lvm, result.contains(where: { $0.kind == .lvm }) {
            do {
                Self.attach(try lvm.allVolumes(), to: &result)
            } catch {
                warn("logical volumes are listed without their LVM details: \(error)")
            }
        }
        return result.sorted(by: DeviceProbe.listingOrder)
    }

    /// Gives each LVM device its LV, matched by dm UUID ("LVM-" + the VG's
    /// and the LV's UUIDs, then "-LAYER" for internal devices). The LV's own
    /// device is the one at its /dev/mapper path; the thin pool's is dm
    /// UUID "...-pool" (lib/activate/dev_manager.c), so the name decides.
    static func attach(_ volumes: [LogicalVolume], to devices: inout [BlockDeviceInfo]) {
        let byUUID = Dictionary(volumes.map { ($0.dmUUID, $0) }, uniquingKeysWith: { a, _ in a })
        for i in devices.indices where devices[i].kind == .lvm {
            guard let uuid = devices[i].dmUUID else { continue }
            let base = String(uuid.prefix(68))   // "LVM-" + 32 + 32
            guard let lv = byUUID[base] else { continue }
            devices[i].logicalVolume = lv
            if let dmName = devices[i].dmName, "/dev/mapper/" + dmName != lv.dmPath {
                devices[i].lvmLayer = uuid.count > 69 ? String(uuid.dropFirst(69)) : "internal"
            }
        }
    }

    /// The device whose node is `path`; see `info(path:)`.
    public func device(at path: String) throws -> BlockDeviceInfo {
        try describe(try name(at: path), mounts: MountIndex(try MountTable.read(from: mountinfo)))
    }

    /// The device sysfs lists as `name` ("sda1", "loop0", "dm-0").
    public func device(named name: String) throws -> BlockDeviceInfo {
        try describe(name, mounts: MountIndex(try MountTable.read(from: mountinfo)))
    }

    // MARK: - Resolving names

    var classBlock: String { "\(sysfs)/class/block" }

    /// The kernel name of the block device whose node is `path`.
    func name(at path: String) throws -> String {
        let status = try Sys.status(path, operation: "probe")
        guard status.type == .blockDevice else {
            throw DeviceError.notBlockDevice(path, fileType: status.type.rawValue)
        }
        let wanted = status.representedDevice
        // A scan of the `dev` attributes (a few dozen small reads) instead of
        // /sys/dev/block/MAJ:MIN, so that one code path serves real and
        // fabricated sysfs trees.
        for name in try Sys.listDirectory(classBlock) {
            if let dev = try? deviceNumber(of: name), dev == wanted { return name }
        }
        throw DeviceError.notInSysfs(path, wanted, sysfs: sysfs)
    }

    /// The major:minor of a listed device.
    func deviceNumber(of name: String) throws -> DeviceNumber {
        let file = "\(classBlock)/\(name)/dev"
        let text = try attribute(file)
        guard let dev = DeviceNumber(text) else {
            throw DeviceError.unparsable(file, "expected MAJOR:MINOR, found \"\(text)\"")
        }
        return dev
    }

    /// Partitions of `disk` by kernel name: the subdirectories of its sysfs
    /// directory that have a `partition` attribute (block/partitions/core.c
    /// adds each partition as a child of the disk's device).
    func partitionNames(of disk: String) -> [String] {
        let dir = "\(classBlock)/\(disk)"
        let entries = (try? Sys.listDirectory(dir)) ?? []
        return entries.filter { Sys.exists("\(dir)/\($0)/partition") }.sorted(by: naturalOrder)
    }

    /// Devices built on `name`, transitively: its partitions, their holders, the
    /// holders' holders (a dm-crypt on an LV on a partition), without repeats.
    func stack(above name: String) -> [String] {
        var seen: Set<String> = [name]
        var order: [String] = []
        var pending = [name]
        while let next = pending.popLast() {
            let children = partitionNames(of: next) + entries("\(classBlock)/\(next)/holders")
            for child in children where seen.insert(child).inserted {
                order.append(child)
                pending.append(child)
            }
        }
        return order
    }

    /// The paths a mount table may give as the source of a mount of `name`:
    /// /dev/NAME, and /dev/mapper/DMNAME for dm devices (dmsetup creates real
    /// nodes there, not symbolic links, when there is no udev).
    func nodePaths(of name: String) -> [String] {
        var paths = ["\(deviceDirectory)/\(name)"]
        if let dmName = try? optionalAttribute("\(classBlock)/\(name)/dm/name") {
            paths.append("\(deviceDirectory)/mapper/\(dmName)")
        }
        return paths
    }

    // MARK: - Describing one device

    /// Reads one device's sysfs directory, probes its superblock and matches
    /// its mounts.
    func describe(_ name: String, mounts: MountIndex) throws -> BlockDeviceInfo {
        let dir = "\(classBlock)/\(name)"
        let dev = try deviceNumber(of: name)
        // sysfs `size` and `start` count 512-byte sectors whatever the logical
        // block size is (Documentation/ABI/stable/sysfs-block).
        let size = try number("\(dir)/size") * 512

        var partition: PartitionInfo?
        var queueOwner = name
        if let number = try optionalAttribute("\(dir)/partition") {
            let parent = lastComponent(of: parentDirectory(of: try Sys.realpath(dir)))
            guard let index = Int(number) else {
                throw DeviceError.unparsable("\(dir)/partition", "expected a number, found \"\(number)\"")
            }
            partition = PartitionInfo(number: index, start: try self.number("\(dir)/start") * 512, parent: parent)
            // A partition has no queue/ of its own; it shares its disk's.
            queueOwner = parent
        }
        let queue = "\(classBlock)/\(queueOwner)/queue"
        let logical = Int(try number("\(queue)/logical_block_size"))
        let physical = Int(try number("\(queue)/physical_block_size"))

        let dmName = try optionalAttribute("\(dir)/dm/name")
        let dmUUID = try optionalAttribute("\(dir)/dm/uuid")
        let kind: BlockDeviceKind
        if partition != nil {
            kind = .partition
        } else if Sys.exists("\(dir)/dm") {
            // LVM names its dm UUIDs "LVM-<vg uuid><lv uuid>" (lib/activate/dev_manager.c).
            kind = (dmUUID?.hasPrefix("LVM-") ?? false) ? .lvm : .dm
        } else if dev.major == DeviceProbe.loopMajor {
            kind = .loop
        } else {
            kind = .disk
        }

        let path = "\(deviceDirectory)/\(name)"
        // Opening a size-0 device is pointless (an unattached loop gives ENXIO).
        let tags = probesFilesystems && size > 0 ? Sys.probeFilesystem(path) : nil
        return BlockDeviceInfo(
            name: name, path: path, major: dev.major, minor: dev.minor, size: size,
            logicalSectorSize: logical, physicalSectorSize: physical, kind: kind,
            readOnly: try attribute("\(dir)/ro") == "1", partition: partition,
            loopBackingFile: try optionalAttribute("\(dir)/loop/backing_file"),
            dmName: dmName, dmUUID: dmUUID,
            fsType: tags?.type, fsUUID: tags?.uuid, fsLabel: tags?.label,
            mountpoints: mounts.entries(on: [dev], nodes: nodePaths(of: name)).map(\.mountPoint),
            holders: entries("\(dir)/holders"), slaves: entries("\(dir)/slaves"))
    }

    /// LOOP_MAJOR in include/uapi/linux/major.h.
    static let loopMajor: UInt32 = 7

    // MARK: - Reading attributes

    /// A sysfs attribute without its trailing newline.
    func attribute(_ file: String) throws(SystemError) -> String {
        var text = Substring(try Sys.readFile(file))
        while text.last == "\n" { text.removeLast() }
        return String(text)
    }

    /// An attribute that only some devices have (dm/name, loop/backing_file):
    /// nil when it is absent.
    func optionalAttribute(_ file: String) throws(SystemError) -> String? {
        do {
            return try attribute(file)
        } catch where Sys.isMissing(error) {
            return nil
        }
    }

    func number(_ file: String) throws -> UInt64 {
        let text = try attribute(file)
        guard let value = UInt64(text) else {
            throw DeviceError.unparsable(file, "expected a number, found \"\(text)\"")
        }
        return value
    }

    /// Names in a directory such as holders/ or slaves/, natural order; none
    /// when the directory is absent.
    func entries(_ dir: String) -> [String] {
        ((try? Sys.listDirectory(dir)) ?? []).sorted(by: naturalOrder)
    }

    // MARK: - Ordering

    /// Whole disks in natural name order, each followed by its partitions.
    static func listingOrder(_ a: BlockDeviceInfo, _ b: BlockDeviceInfo) -> Bool {
        let diskA = a.partition?.parent ?? a.name, diskB = b.partition?.parent ?? b.name
        if diskA != diskB { return naturalOrder(diskA, diskB) }
        return (a.partition?.number ?? 0) < (b.partition?.number ?? 0)
    }
}

/// Orders names the way people count: loop2 before loop10, sda2 before sda10.
func naturalOrder(_ a: String, _ b: String) -> Bool {
    var i = a.unicodeScalars.makeIterator(), j = b.unicodeScalars.makeIterator()
    var x = i.next(), y = j.next()
    func isDigit(_ s: Unicode.Scalar?) -> Bool { s.map { $0.properties.numericType == .decimal && $0.isASCII } ?? false }
    while let p = x, let q = y {
        if isDigit(p) && isDigit(q) {
            var m = "", n = ""
            while let d = x, isDigit(d) { m.unicodeScalars.append(d); x = i.next() }
            while let d = y, isDigit(d) { n.unicodeScalars.append(d); y = j.next() }
            // Compare by length after dropping leading zeros, then digit by digit:
            // no overflow however long the run.
            let mm = m.drop { $0 == "0" }, nn = n.drop { $0 == "0" }
            if mm.count != nn.count { return mm.count < nn.count }
            if mm != nn { return mm < nn }
            if m.count != n.count { return m.count < n.count }
            continue
        }
        if p != q { return p.value < q.value }
        x = i.next(); y = j.next()
    }
    return x == nil && y != nil
}

/// "/a/b/c" → "/a/b"; "c" → "."; "/c" → "/".
func parentDirectory(of path: String) -> String {
    var trimmed = Substring(path)
    while trimmed.count > 1 && trimmed.last == "/" { trimmed.removeLast() }
    guard let slash = trimmed.lastIndex(of: "/") else { return "." }
    if slash == trimmed.startIndex { return "/" }
    return String(trimmed[..<slash])
}

/// "/a/b/c" → "c".
func lastComponent(of path: String) -> String {
    var trimmed = Substring(path)
    while trimmed.count > 1 && trimmed.last == "/" { trimmed.removeLast() }
    guard let slash = trimmed.lastIndex(of: "/"), trimmed.count > 1 else { return String(trimmed) }
    return String(trimmed[trimmed.index(after: slash)...])
}
