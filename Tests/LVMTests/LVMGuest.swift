import Foundation
import Testing
import TestSupport

/// Every suite that runs inside the LVM VM is nested in this one, so that it
/// inherits its traits and the host suite finds it by one filter
/// (`LVMVirtualMachineTests.guestFilter`):
///
/// ```swift
/// extension GuestTests {
///     @Suite struct Snapshots {
///         @Test func something() throws { let lv = try LVMGuest.linear(size: 16 << 20) ... }
///     }
/// }
/// ```
///
/// Enabled only in the VM (it shows as skipped on the host), and serialized:
/// the guest has one slow CPU and one volume group that every test shares.
@Suite(.enabled(if: LVMEnvironment.inGuest, Comment(rawValue: LVMEnvironment.guestOnlyReason)), .serialized)
enum GuestTests {}

/// The guest's LVM: one volume group on /dev/vda and /dev/vdb (2 GiB each),
/// made on first use in a guest run, and the logical volumes the tests make in
/// it, each removed when the test lets go of it (or by `remove()`).
///
/// LVM commands cost seconds in the guest (TCG): make the few volumes a test
/// needs, of a few MiB (sizes round up to the 4 MiB extent).
enum LVMGuest {
    /// The volume group's name.
    static let vg = "rbtest"
    /// The disks it spans: the VM's blank virtio disks.
    static let disks = ["/dev/vda", "/dev/vdb"]

    nonisolated(unsafe) private static var made = false
    private static let lock = NSLock()

    /// Makes the volume group once per guest run (pvcreate, vgcreate); throws
    /// outside the VM, whatever the environment says, and when the disks are
    /// not blank.
    static func volumeGroup() throws -> String {
        lock.lock()
        defer { lock.unlock() }
        if made { return vg }
        guard LVMEnvironment.kernelSaysGuest else {
            throw GuestError("refusing to put LVM labels on \(disks.joined(separator: " and ")): the kernel command line lacks ringback.lvmvm=1, so this is not the LVM VM")
        }
        for disk in disks {
            // blkid exits 2 when it finds no signature: the disk is blank.
            let r = try Shell.run(["blkid", "-p", disk])
            guard r.status == 2 else {
                throw GuestError("refusing to pvcreate \(disk): it is not blank (blkid: \(r.stdout)\(r.stderr))")
            }
        }
        try lvm(["pvcreate", "-q"] + disks)
        try lvm(["vgcreate", "-q", vg] + disks)
        made = true
        return vg
    }

    nonisolated(unsafe) private static var counter = 0

    /// A fresh LV name with `prefix`: every test gets its own names, so that
    /// a test that failed to clean up does not break the next.
    static func uniqueName(_ prefix: String) -> String {
        lock.lock()
        defer { lock.unlock() }
        counter += 1
        return "\(prefix)\(counter)"
    }

    // MARK: - Making volumes

    /// A linear LV of `size` bytes (rounded up to the extent size, 4 MiB).
    static func linear(size: UInt64, name: String? = nil) throws -> GuestLV {
        let vg = try volumeGroup(), lv = name ?? uniqueName("lin")
        try lvm(["lvcreate", "-q", "-y", "-L", "\(size)b", "-n", lv, vg])
        return GuestLV(vg: vg, name: lv)
    }

    /// A thin pool of `size` bytes with chunks of `chunkSize` (a multiple of
    /// 64 KiB).
    static func thinPool(size: UInt64, chunkSize: UInt64 = 64 << 10, name: String? = nil) throws -> GuestLV {
        let vg = try volumeGroup(), lv = name ?? uniqueName("pool")
        try lvm(["lvcreate", "-q", "-y", "-L", "\(size)b", "--chunksize", "\(chunkSize)b", "-T", "\(vg)/\(lv)"])
        return GuestLV(vg: vg, name: lv)
    }

    /// A thin LV of `virtualSize` bytes in `pool`.
    static func thin(in pool: GuestLV, virtualSize: UInt64, name: String? = nil) throws -> GuestLV {
        let lv = name ?? uniqueName("thin")
        try lvm(["lvcreate", "-q", "-V", "\(virtualSize)b", "-T", pool.fullName, "-n", lv])
        return GuestLV(vg: pool.vg, name: lv, removedWith: pool)
    }

    /// A snapshot of `origin`: classic (copy-on-write, `cowSize` bytes of
    /// exception store) when `cowSize` is given, thin when `origin` is a thin
    /// LV and `cowSize` is nil. Thin snapshots are made active (LVM's default
    /// is to skip their activation).
    static func snapshot(of origin: GuestLV, cowSize: UInt64? = nil, name: String? = nil) throws -> GuestLV {
        let lv = name ?? uniqueName("snap")
        if let cowSize {
            try lvm(["lvcreate", "-q", "-s", "-L", "\(cowSize)b", "-n", lv, origin.fullName])
        } else {
            try lvm(["lvcreate", "-q", "-s", "-k", "n", "-n", lv, origin.fullName])
        }
        return GuestLV(vg: origin.vg, name: lv, removedWith: origin)
    }

    /// Runs an LVM command; throws with its output when it fails.
    @discardableResult
    static func lvm(_ args: [String]) throws -> String {
        try Shell.check(args)
    }
}

/// A logical volume a guest test made; removed (`lvremove -f`) when released
/// or by `remove()`, also when the test fails. Removing an origin or a pool
/// removes its snapshots and thin LVs with it, as LVM does.
final class GuestLV: @unchecked Sendable {
    let vg: String
    let name: String
    /// The LV whose removal takes this one with it (the origin of a snapshot,
    /// the pool of a thin LV): held so that it is released after this one.
    private let parent: GuestLV?
    private var removed = false

    init(vg: String, name: String, removedWith parent: GuestLV? = nil) {
        self.vg = vg
        self.name = name
        self.parent = parent
    }

    /// "VG/LV", LVM's own name for it.
    var fullName: String { "\(vg)/\(name)" }
    /// /dev/VG/LV (lvm makes the link itself in a guest without udev).
    var path: String { "/dev/\(vg)/\(name)" }
    /// /dev/mapper/VG-LV, with each dash in either name doubled (libdm's escaping).
    var mapperPath: String {
        "/dev/mapper/" + vg.replacingOccurrences(of: "-", with: "--") + "-" + name.replacingOccurrences(of: "-", with: "--")
    }

    /// Size in bytes, as the kernel sees it.
    func size() throws -> UInt64 {
        UInt64(try Shell.check(["blockdev", "--getsize64", path]).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
    }

    /// Fills the first `length` bytes (or all) with random bytes and fsyncs.
    func fillRandom(length: UInt64? = nil) throws {
        let n = try length ?? size()
        try LoopDevice.writeRandom(regions: [(0, n)], to: path)
    }

    /// Writes `data` at `offset` and fsyncs.
    func write(_ data: [UInt8], at offset: UInt64) throws {
        let fd = open(path, O_WRONLY)
        guard fd >= 0 else { throw GuestError("cannot open \(path) for writing: errno \(errno)") }
        defer { close(fd) }
        let n = data.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
        guard n == data.count, fsync(fd) == 0 else { throw GuestError("cannot write \(data.count) bytes at \(offset) of \(path)") }
    }

    /// Removes the LV now; one that is already gone (removed with its origin
    /// or pool) is not an error.
    func remove() throws {
        guard !removed else { return }
        let r = try Shell.run(["lvremove", "-q", "-f", "-y", fullName])
        if !r.succeeded {
            let gone = try Shell.run(["lvs", fullName])
            guard !gone.succeeded else {
                throw GuestError("cannot remove \(fullName): \(r.stderr)\(r.stdout)")
            }
        }
        removed = true
    }

    deinit {
        do { try remove() } catch { print("warning: \(error)") }
    }
}

/// An ext4 filesystem made on a device and mounted on a fresh folder;
/// unmounted when released or by `unmount()`, also when the test fails.
final class GuestMount: @unchecked Sendable {
    let device: String
    let mountPoint: String
    private let directory: TemporaryDirectory
    /// Held so that the LV outlives the mount (and is removed after it).
    private let volume: GuestLV?
    private var mounted = false

    /// mkfs.ext4 on the LV (everything on it is lost), then mounts it.
    convenience init(ext4On lv: GuestLV) throws {
        try self.init(ext4On: lv.path, holding: lv)
    }

    /// mkfs.ext4 on `device` (everything on it is lost), then mounts it.
    init(ext4On device: String, holding volume: GuestLV? = nil) throws {
        self.device = device
        self.volume = volume
        directory = try TemporaryDirectory(prefix: "ringback-mnt")
        mountPoint = directory.path
        // No lazy init: the guest's CPU is slow, and a background thread
        // zeroing inode tables would write during the backups under test.
        try Shell.check(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", device])
        try Shell.check(["mount", device, mountPoint])
        mounted = true
    }

    func file(_ name: String) -> String { mountPoint + "/" + name }

    func unmount() throws {
        guard mounted else { return }
        try Shell.check(["umount", mountPoint])
        mounted = false
    }

    deinit {
        do { try unmount() } catch { print("warning: \(error)") }
    }
}

/// A guest fixture's failure, said in words.
struct GuestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
