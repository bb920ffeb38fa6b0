import BlockDevices
import BlockIO
import Foundation

/// The refusals that keep a backup from writing where it must not: onto its own
/// source, into a filesystem that lives on the source, over an existing image.
public enum TargetCheck {
    /// Checks `target` against `source`; returns true when the target is a block device.
    public static func validate(source: BlockFile, target: String, force: Bool) throws -> Bool {
        var st = stat()
        let exists = stat(target, &st) == 0
        if !exists && errno != ENOENT { throw SystemError(errno: errno, "stat \(target)") }
        var targetIsDevice = false
        if exists {
            let fmt = st.st_mode & S_IFMT
            if fmt == S_IFBLK {
                targetIsDevice = true
                if source.kind == .blockDevice && UInt64(st.st_rdev) == source.rdev {
                    throw BackupError("Source and target cannot be the same: \(source.path) and \(target) are one device")
                }
                if source.kind == .blockDevice, DiskTopology.overlap(UInt64(st.st_rdev), source.rdev) {
                    throw BackupError("target \(target) overlaps source \(source.path) (one is a partition of the other)")
                }
                let mounts = (try? MountTable.current().filesystemsMounted(from: target)) ?? []
                if let m = mounts.first {
                    throw BackupError("target device \(target) is mounted at \(m.mountPoint); refusing to overwrite a mounted filesystem")
                }
            } else if fmt == S_IFREG {
                if UInt64(st.st_dev) == source.device && UInt64(st.st_ino) == source.inode {
                    throw BackupError("Source and target cannot be the same: \(target) is \(source.path)")
                }
                if !force {
                    throw BackupError("image \(target) already exists; use --force to replace it")
                }
            } else {
                throw BackupError("target \(target) is not a block device or a regular file")
            }
        } else {
            let dir = (target as NSString).deletingLastPathComponent
            var dst = stat()
            guard stat(dir.isEmpty ? "." : dir, &dst) == 0 else {
                throw SystemError(errno: errno, "use directory \(dir.isEmpty ? "." : dir) for image \(target)")
            }
            st = dst
        }
        if !targetIsDevice && source.kind == .blockDevice {
            // The filesystem that will hold the image must not live on the source.
            let fsDevice = UInt64(st.st_dev)
            if fsDevice == source.rdev || DiskTopology.overlap(fsDevice, source.rdev) {
                let where_ = try? MountTable.current().mount(containing: target).mountPoint
                throw BackupError("target \(target) is inside a filesystem mounted from the source \(source.path)"
                                  + (where_.map { " (at \($0))" } ?? "") + "; write the image to another device")
            }
        }
        return targetIsDevice
    }
}

/// Which block devices share a disk, from sysfs (/sys/dev/block/MAJ:MIN).
enum DiskTopology {
    /// The whole disk's dev_t of a device (itself for a whole disk).
    static func wholeDisk(of dev: UInt64) -> UInt64 {
        let link = "/sys/dev/block/\(major(dev)):\(minor(dev))"
        guard FileManager.default.fileExists(atPath: link + "/partition"),
              let parent = try? String(contentsOfFile: link + "/../dev", encoding: .utf8) else { return dev }
        let parts = parent.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ":")
        guard parts.count == 2, let ma = UInt64(parts[0]), let mi = UInt64(parts[1]) else { return dev }
        return makedev(ma, mi)
    }

    /// True when `a` and `b` are the same device, or one is a partition of the other.
    static func overlap(_ a: UInt64, _ b: UInt64) -> Bool {
        if a == b { return true }
        let da = wholeDisk(of: a), db = wholeDisk(of: b)
        return (da == b) || (db == a)
    }

    static func major(_ dev: UInt64) -> UInt64 { (dev >> 8) & 0xfff | (dev >> 32) & ~0xfff }
    static func minor(_ dev: UInt64) -> UInt64 { dev & 0xff | (dev >> 12) & ~0xff }
    static func makedev(_ ma: UInt64, _ mi: UInt64) -> UInt64 {
        (ma & 0xfff) << 8 | (ma & ~0xfff) << 32 | (mi & 0xff) | (mi & ~0xff) << 12
    }
}
