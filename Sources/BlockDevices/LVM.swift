import Foundation

/// Resolves the names of LVM logical volumes — `VG/LV`, `/dev/VG/LV`,
/// `/dev/mapper/VG-LV` and the LV's `/dev/dm-N` — to the LV's device-mapper
/// node, and describes LVs with `lvs --reportformat json` (DESIGN §5).
///
/// Whether an existing node is an LV is read from sysfs (its dm UUID starts
/// with "LVM-"), so plain disks, partitions, loop devices, files and dm devices
/// that LVM does not own never cost an lvs run. lvs runs for details, and for
/// a name whose node is not there, to say why (no such VG or LV, inactive).
public struct LVM: Sendable {
    /// Where sysfs is mounted.
    let sysfs: String
    /// The lvs executable; nil when the LVM tools are not installed.
    let lvs: String?
    /// Seconds lvs may take (it waits for the VG's lock while another LVM
    /// command holds it).
    let timeout: Double

    /// This host's LVM: lvs from PATH, else /usr/sbin or /sbin (not on a
    /// user's PATH on Debian).
    public init(timeout: Double = 120) {
        self.init(sysfs: "/sys", lvs: Self.findLVS(), timeout: timeout)
    }

    init(sysfs: String, lvs: String?, timeout: Double = 120) {
        self.sysfs = sysfs
        self.lvs = lvs
        self.timeout = timeout
    }

    static func findLVS() -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let dirs = path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin"]
        return dirs.map { $0 + "/lvs" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    // MARK: - Names to nodes

    /// The node to open for `name`: the LV's device-mapper node for a name of
    /// an LV (see `node(for:)`), `name` itself for anything else.
    public func devicePath(for name: String) throws -> String {
        try node(for: name) ?? name
    }

    /// The device-mapper node of the LV that `name` names — /dev/mapper/VG-LV
    /// (libdm's or udev's node; not resolved further, so that the name is the
    /// same on every host and across reboots), else /dev/dm-N — or nil when
    /// `name` is not an LV's name (a disk, a partition, a file, a dm device
    /// LVM does not own, or a missing path outside any VG).
    ///
    /// Throws `LVMError` when the name is an LV's but the LV cannot be read:
    /// no such VG or LV (for `VG/LV`), inactive, or the LVM tools are missing
    /// (for `VG/LV`, which only lvs can resolve).
    public func node(for name: String) throws -> String? {
        guard let reference = reference(for: name) else { return nil }
        if let dev = reference.device { return try canonicalNode(of: dev, dmName: reference.dmName) }
        // A mapper node of that name already there is the LV's, if LVM owns it.
        let mapper = "/dev/mapper/" + LVMName.mapperName(vg: reference.vg, lv: reference.lv)
        if let st = try? Sys.status(mapper, operation: "probe"), st.type == .blockDevice,
           let dm = deviceMapperAttributes(of: st.representedDevice), dm.uuid.hasPrefix("LVM-") {
            return mapper
        }
        // Not there: lvs says why (or what its node is after all).
        guard let lv = try volume(reference) else { return nil }
        return try node(of: lv)
    }

    /// The LV that `name` names, as lvs reports it (active or not), or nil
    /// when `name` is not an LV's name (see `node(for:)`).
    public func volume(named name: String) throws -> LogicalVolume? {
        guard let reference = reference(for: name) else { return nil }
        return try volume(reference)
    }

    /// The node of an active LV: its /dev/mapper path (lv_dm_path) when that
    /// is a device of the LV (by dm UUID: a thin pool's lv_kernel_minor is its
    /// -tpool device's, not the one at its path), else the /dev/dm-N of
    /// lv_kernel_major:minor. Throws `LVMError` (`.inactive`) for an inactive
    /// LV, saying how to activate it.
    public func node(of lv: LogicalVolume) throws -> String {
        guard lv.isActive else {
            let how = lv.skipsActivation
                ? "it has the activation-skip flag, as thin snapshots do: lvchange -ay -K \(lv.fullName)"
                : "lvchange -ay \(lv.fullName)"
            let state = lv.isInvalidSnapshot ? "an invalid snapshot (its copy-on-write space overflowed)" : "not active"
            throw LVMError(.inactive, name: lv.fullName, reason: lv.isInvalidSnapshot ? "it is \(state)" : "it is \(state) (\(how))")
        }
        if let st = try? Sys.status(lv.dmPath, operation: "probe"), st.type == .blockDevice,
           let dm = deviceMapperAttributes(of: st.representedDevice), dm.uuid.hasPrefix(lv.dmUUID) {
            return lv.dmPath
        }
        guard let dev = lv.kernelDevice else {
            throw LVMError(.noDeviceNode, name: lv.fullName, reason: "lvs says it is active but gives no device number, and \(lv.dmPath) is not its node")
        }
        return try canonicalNode(of: dev, dmName: nil)
    }

    /// /dev/mapper/DMNAME when that node is the device, else /dev/KERNELNAME
    /// (devtmpfs always has dm-N).
    private func canonicalNode(of dev: DeviceNumber, dmName: String?) throws -> String {
        let dm = deviceMapperAttributes(of: dev)
        for candidate in [(dmName ?? dm?.name).map { "/dev/mapper/" + $0 }, dm.map { "/dev/" + $0.kernelName }] {
            guard let candidate, let st = try? Sys.status(candidate, operation: "probe") else { continue }
            if st.type == .blockDevice && st.representedDevice == dev { return candidate }
        }
        throw LVMError(.noDeviceNode, name: dmName ?? dev.description,
                       reason: "device \(dev) is active but neither /dev/mapper/\(dmName ?? dm?.name ?? "?") nor /dev/\(dm?.kernelName ?? "dm-?") is its node")
    }

    // MARK: - What a name means

    /// What an LV name says before lvs is asked.
    struct Reference {
        var vg: String
        var lv: String
        /// Set when the name is an existing node: its device and dm name.
        var device: DeviceNumber?
        var dmName: String?
        /// Whether a missing VG (or missing LVM tools) means "not an LV"
        /// rather than an error: true for paths (/dev/x/y may be anything),
        /// false for VG/LV, which only LVM can mean.
        var pathOnly: Bool
    }

    /// Classifies `name`:
    /// - `VG/LV` (relative, one slash, valid LVM names, and no file of that
    ///   name in the working directory) is an LV name;
    /// - an existing block device is an LV's when its dm UUID starts with
    ///   "LVM-" and its dm name is VG-LV without a layer (vg0-root-real,
    ///   vg0-pool-tpool are LVM's internal devices, used as plain dm devices);
    /// - a missing /dev/mapper/VG-LV or /dev/VG/LV may be an inactive LV.
    func reference(for name: String) -> Reference? {
        if !name.hasPrefix("/") {
            guard let (vg, lv) = LVMName.volumeGroupAndVolume(name), !Sys.exists(name) else { return nil }
            return Reference(vg: vg, lv: lv, pathOnly: false)
        }
        do {
            let st = try Sys.status(name, operation: "probe")
            guard st.type == .blockDevice, let dm = deviceMapperAttributes(of: st.representedDevice),
                  dm.uuid.hasPrefix("LVM-"), let split = LVMName.splitMapperName(dm.name), split.layer == nil
            else { return nil }
            return Reference(vg: split.vg, lv: split.lv, device: st.representedDevice, dmName: dm.name, pathOnly: true)
        } catch {
            if name.hasPrefix("/dev/mapper/"), let split = LVMName.splitMapperName(String(name.dropFirst(12))), split.layer == nil {
                return Reference(vg: split.vg, lv: split.lv, pathOnly: true)
            }
            if let (vg, lv) = LVMName.devPath(name) { return Reference(vg: vg, lv: lv, pathOnly: true) }
            return nil
        }
    }

    /// The kernel name, dm name and dm UUID of a dm device (sysfs
    /// /sys/dev/block/MAJ:MIN/dm/); nil for devices that are not dm.
    func deviceMapperAttributes(of dev: DeviceNumber) -> (kernelName: String, name: String, uuid: String)? {
        let dir = "\(sysfs)/dev/block/\(dev)"
        guard let name = try? Sys.readFile(dir + "/dm/name"), let uuid = try? Sys.readFile(dir + "/dm/uuid"),
              let real = try? Sys.realpath(dir) else { return nil }
        return (lastComponent(of: real), trimmed(name), trimmed(uuid))
    }

    private func trimmed(_ s: String) -> String {
        var t = Substring(s)
        while t.last == "\n" { t.removeLast() }
        return String(t)
    }

    // MARK: - lvs

    /// Every LV, hidden ones included (`lvs -a`).
    public func allVolumes() throws -> [LogicalVolume] {
        let r = try runLVS(["-a"] + LVSReport.arguments, about: "")
        guard r.status == 0 else {
            throw LVMError(.commandFailed, name: "", reason: "lvs exited \(r.status): \(r.stderr.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        return try LVSReport.parse(r.stdout)
    }

    private func volume(_ reference: Reference) throws -> LogicalVolume? {
        do {
            return try volume(vg: reference.vg, lv: reference.lv)
        } catch let error as LVMError where reference.pathOnly && (error.code == .toolsMissing || error.code == .noSuchVolumeGroup) {
            return nil
        }
    }

    /// The LV VG/LV as lvs reports it (hidden LVs too).
    public func volume(vg: String, lv: String) throws -> LogicalVolume {
        let name = "\(vg)/\(lv)"
        let r = try runLVS(["-a"] + LVSReport.arguments + ["--", name], about: name)
        if r.status != 0 {
            let message = r.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
            if message.contains("Volume group \"\(vg)\" not found") {
                throw LVMError(.noSuchVolumeGroup, name: name, reason: "volume group \(vg) does not exist")
            }
            if message.contains("Failed to find logical volume") {
                throw LVMError(.noSuchVolume, name: name, reason: "volume group \(vg) has no logical volume \(lv)")
            }
            throw LVMError(.commandFailed, name: name, reason: "lvs exited \(r.status): \(message)")
        }
        // lvs answers a hidden LV asked for without -a with an empty report; be
        // as clear about any empty report.
        guard let found = try LVSReport.parse(r.stdout).first(where: { $0.vg == vg && $0.unbracketedName == lv }) else {
            throw LVMError(.noSuchVolume, name: name, reason: "volume group \(vg) has no logical volume \(lv)")
        }
        return found
    }

    /// Runs lvs in the C locale (its messages are matched above), without its
    /// warnings about descriptors this process holds open.
    private func runLVS(_ args: [String], about name: String) throws -> (status: Int32, stdout: String, stderr: String) {
        guard let lvs else {
            throw LVMError(.toolsMissing, name: name, reason: "the LVM tools are not installed (no lvs in PATH, /usr/sbin or /sbin; install lvm2)")
        }
        let r: Self.ToolResult
        do { r = try Self.runTool(lvs, args, timeout: timeout) } catch {
            throw LVMError(.commandFailed, name: name, reason: "cannot run \(lvs): \(error.localizedDescription)")
        }
        if r.timedOut {
            throw LVMError(.commandFailed, name: name, reason: "lvs did not finish within \(Int(timeout)) s (another LVM command holding the volume group's lock?)")
        }
        return (r.status, r.stdout, r.stderr)
    }

    /// What an LVM tool did.
    public struct ToolResult: Sendable {
        public var status: Int32
        public var stdout: String
        public var stderr: String
        /// Killed after the timeout.
        public var timedOut: Bool
    }

    /// Runs an LVM tool (lvs, lvcreate, dmsetup, thin_delta …) in the C locale
    /// without its warnings about inherited descriptors; both pipes are read
    /// at once so that neither fills up, and the tool is killed after
    /// `timeout` seconds (an LVM command waits for the VG's lock).
    public static func runTool(_ executable: String, _ args: [String], timeout: Double) throws -> ToolResult {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        env["LC_ALL"] = "C"
        env["LVM_SUPPRESS_FD_WARNINGS"] = "1"
        p.environment = env
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let group = DispatchGroup()
        nonisolated(unsafe) var errData = Data()
        group.enter()
        DispatchQueue.global().async {
            errData = err.fileHandleForReading.readDataToEndOfFile()
            group.leave()
        }
        let killer = DispatchWorkItem { if p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: killer)
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        p.waitUntilExit()
        killer.cancel()
        // Closed here, not left to Foundation: a daemon resolving names for
        // months must not keep two descriptors per run.
        for handle in [out.fileHandleForReading, out.fileHandleForWriting, err.fileHandleForReading, err.fileHandleForWriting] {
            try? handle.close()
        }
        return ToolResult(status: p.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                          stderr: String(decoding: errData, as: UTF8.self), timedOut: p.terminationReason == .uncaughtSignal)
    }
}
