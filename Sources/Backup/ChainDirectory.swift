import Foundation

/// A repository folder holding one chain: `<seq>-full-<UTC>.qcow2` followed by
/// `<seq>-inc-<UTC>.qcow2` overlays, each with its digest file (DESIGN §8).
public struct ChainDirectory: Sendable {
    public let path: String
    public init(path: String) { self.path = path }

    public enum Kind: String, Sendable { case full, inc }

    /// The chain's images, oldest first (only names of the chain's form count).
    public func images() -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        return names.filter { name in
            name.hasSuffix(".qcow2") && name.count > 10 && name.prefix(4).allSatisfy(\.isNumber)
                && (name.dropFirst(4).hasPrefix("-full-") || name.dropFirst(4).hasPrefix("-inc-"))
        }.sorted().map { path + "/" + $0 }
    }

    /// The newest image, which an incremental builds on.
    public var newest: String? { images().last }

    /// The name for the next image of the chain. A full backup in a folder
    /// that already holds a chain continues the numbering: the chain is then
    /// restarted from it.
    public func next(_ kind: Kind, at date: Date = Date()) -> String {
        let seq = (images().last.flatMap { Int(URL(fileURLWithPath: $0).lastPathComponent.prefix(4)) } ?? -1) + 1
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyyMMdd'T'HHmmss'Z'"
        return path + "/" + String(format: "%04d", seq) + "-\(kind.rawValue)-" + f.string(from: date) + ".qcow2"
    }

    public static func isDirectory(_ path: String) -> Bool {
        var dir: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &dir) && dir.boolValue
    }
}
