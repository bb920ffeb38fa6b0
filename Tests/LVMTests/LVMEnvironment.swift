import Foundation
import TestSupport

/// Whether this test process runs inside the LVM VM (scripts/lvm-vm.sh sets
/// LVMVM_OUT there). Guest suites are enabled only there; the host suite that
/// boots the VM and runs them is enabled only outside it.
enum LVMEnvironment {
    static var inGuest: Bool { ProcessInfo.processInfo.environment["LVMVM_OUT"] != nil }

    /// The folder shared writable with the host (the same path on both sides):
    /// what a guest test writes there outlives the VM.
    static var sharedFolder: String? { ProcessInfo.processInfo.environment["LVMVM_OUT"] }

    /// True only in the VM: its kernel command line carries the marker that
    /// scripts/lvm-vm.sh puts there. An environment variable can leak into a
    /// host shell; this cannot, and the fixture checks it before it writes
    /// LVM labels on /dev/vda and /dev/vdb (which on a host may be its root disk).
    static var kernelSaysGuest: Bool {
        let cmdline = (try? String(contentsOfFile: "/proc/cmdline", encoding: .utf8)) ?? ""
        return cmdline.split(separator: " ").contains { $0.trimmingCharacters(in: .whitespacesAndNewlines) == "ringback.lvmvm=1" }
    }

    static let guestOnlyReason = "runs inside the LVM VM only (the host suite LVMVirtualMachineTests boots it and runs this)"

    // MARK: - The host side

    /// The package's root, from this file's place in it.
    static var packageRoot: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path
    }

    /// scripts/lvm-vm.sh of this package.
    static var vmScript: String { packageRoot + "/scripts/lvm-vm.sh" }

    /// Whether this host can boot the VM: root, and a qemu-system-x86_64 that runs.
    static var canBootVM: Bool {
        guard TestEnvironment.isRoot else { return false }
        return (try? Shell.run(["qemu-system-x86_64", "--version"]).succeeded) ?? false
    }

    /// The host suite runs when the VM can boot here, and in CI as root
    /// (RINGBACK_REQUIRE_ROOT_TESTS=1), where a host that cannot boot it fails.
    static var hostSuiteEnabled: Bool { !inGuest && (canBootVM || TestEnvironment.rootTestsRequired) }

    static let hostSkipReason = "needs root and qemu-system-x86_64 (bash scripts/setup.sh installs it) to boot the LVM VM"
}
