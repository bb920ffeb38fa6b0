import ArgumentParser
import BlockDevices
import Foundation

/// `ringback devices`: lists block devices from sysfs, libblkid and the mount table.
struct Devices: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "devices",
        abstract: "List block devices with sizes, sector sizes, kinds, LVM volumes, filesystems, mountpoints and holders.")

    @Flag(help: "Print a JSON array (sizes and offsets in bytes) instead of a table.")
    var json = false

    @Flag(help: "Include unattached (size 0) loop devices.")
    var all = false

    func run() throws {
        let devices = DeviceTable.visible(try DeviceProbe.all(warn: { warn($0) }), all: all)
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: try encoder.encode(devices), as: UTF8.self))
        } else {
            print(DeviceTable.render(devices), terminator: "")
        }
    }
}
