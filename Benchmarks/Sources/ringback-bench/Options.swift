import ArgumentParser
import Foundation

/// "4G", "256M", "512K" or a number of bytes.
func parseSize(_ text: String, option: String) throws -> UInt64 {
    let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
    var digits = text.uppercased()
    var unit: UInt64 = 1
    if let last = digits.last, let u = units[last] { unit = u; digits.removeLast() }
    guard let n = UInt64(digits) else { throw ValidationError("\(option): '\(text)' is not a size like 4G or 256M") }
    return n * unit
}

/// A comma-separated list of set-ups ("D,S").
func parseSetups(_ text: String, option: String) throws -> [SourceSetup.Kind] {
    let kinds = try text.split(separator: ",").map { name in
        guard let kind = SourceSetup.Kind(rawValue: name.trimmingCharacters(in: .whitespaces).uppercased()) else {
            throw ValidationError("\(option): unknown set-up '\(name)' (D or S)")
        }
        return kind
    }
    guard !kinds.isEmpty else { throw ValidationError("\(option): name at least one of D, S") }
    return kinds
}

/// Writes results as pretty JSON with snake_case keys, creating the folder.
func writeResults<T: Encodable>(_ results: T, to path: String) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    encoder.keyEncodingStrategy = .convertToSnakeCase
    try FileManager.default.createDirectory(
        atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
    try encoder.encode(results).write(to: URL(fileURLWithPath: path), options: .atomic)
}
