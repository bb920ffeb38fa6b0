import Foundation

/// Whether this test process runs inside the LVM VM (scripts/lvm-vm.sh sets
/// LVMVM_OUT there). Guest suites are enabled only there; the host suite that
/// boots the VM and runs them is enabled only outside it.
enum LVMEnvironment {
    static var inGuest: Bool { ProcessInfo.processInfo.environment["LVMVM_OUT"] != nil }
}
