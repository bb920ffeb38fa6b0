import ArgumentParser
import BlockDevices
import Foundation

/// A byte count given as 65536, 64K, 64KiB, 1M, 2G (binary multiples).
struct ByteCount: ExpressibleByArgument, Sendable {
    let value: UInt64

    init?(argument: String) {
        let s = argument.trimmingCharacters(in: .whitespaces).uppercased()
        let digits = s.prefix { $0.isNumber }
        guard !digits.isEmpty, let n = UInt64(digits) else { return nil }
        var unit = String(s.dropFirst(digits.count))
        for suffix in ["IB", "B"] where unit.hasSuffix(suffix) && unit.count > 0 {
            unit = String(unit.dropLast(suffix.count)); break
        }
        let shift: UInt64
        switch unit {
        case "": shift = 0
        case "K": shift = 10
        case "M": shift = 20
        case "G": shift = 30
        case "T": shift = 40
        default: return nil
        }
        let (v, overflow) = n.multipliedReportingOverflow(by: 1 << shift)
        guard !overflow else { return nil }
        value = v
    }

    static var defaultCompletionKind: CompletionKind { .default }
}

/// Writes to standard error.
func warn(_ message: String) {
    FileHandle.standardError.write(Data("ringback: \(message)\n".utf8))
}

/// Exits with a message on stderr: the failure path of every command.
func fail(_ message: String, code: Int32 = 1) -> Never {
    warn(message)
    exit(code)
}

func printJSON<T: Encodable>(_ value: T) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    guard let data = try? encoder.encode(value) else { return }
    print(String(decoding: data, as: UTF8.self))
}

func formatBytes(_ n: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = Double(n), i = 0
    while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
    return i == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[i])
}

/// `path` made absolute against this process's working directory: ringbackd
/// resolves names in its own.
func absolute(_ path: String) -> String {
    URL(fileURLWithPath: path).standardizedFileURL.path
}

/// A device name as ringbackd should get it: an LVM `VG/LV` name as it is
/// (it is no path, unless a file of that name is here), any other made absolute.
func deviceArgument(_ name: String) -> String {
    if LVMName.volumeGroupAndVolume(name) != nil && !FileManager.default.fileExists(atPath: name) { return name }
    return absolute(name)
}
