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

    /// The chain's images with what their names say, oldest first.
    public func chainImages() -> [ChainImage] { images().compactMap(ChainImage.init(path:)) }

    /// The chain split at each full backup: a full followed by the
    /// incrementals that build on it. Incrementals before the first full (no
    /// image of this folder to build on) belong to no segment.
    public func segments() -> [[ChainImage]] {
        var out: [[ChainImage]] = []
        for image in chainImages() {
            if image.kind == .full { out.append([image]) } else if !out.isEmpty { out[out.count - 1].append(image) }
        }
        return out
    }

    /// Images still being written (or left behind by a backup that died): a
    /// folder holding one is not touched by chain maintenance.
    public func partials() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).filter { $0.hasSuffix(".partial") }.sorted()
    }

    /// `name` inside the folder.
    public func file(_ name: String) -> String { path + "/" + name }

    public static func isDirectory(_ path: String) -> Bool {
        var dir: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &dir) && dir.boolValue
    }
}

/// One image of a chain folder, `<seq>-<full|inc>-<UTC time>.qcow2`.
public struct ChainImage: Sendable, Equatable {
    public let path: String
    /// The file name.
    public let name: String
    public let seq: Int
    public let kind: ChainDirectory.Kind
    /// The point in time the name records, `yyyyMMddTHHmmssZ` (sorts as time does).
    public let time: String

    /// nil unless the file name has the chain's form.
    public init?(path: String) {
        let name = (path as NSString).lastPathComponent
        guard name.hasSuffix(".qcow2"), name.count > 10, let seq = Int(name.prefix(4)),
              name.prefix(4).allSatisfy(\.isNumber) else { return nil }
        let rest = name.dropFirst(4).dropLast(".qcow2".count)
        if rest.hasPrefix("-full-") {
            kind = .full
            time = String(rest.dropFirst("-full-".count))
        } else if rest.hasPrefix("-inc-") {
            kind = .inc
            time = String(rest.dropFirst("-inc-".count))
        } else {
            return nil
        }
        self.path = path
        self.name = name
        self.seq = seq
    }

    /// The name of the same point in time held by a full image: how a full
    /// is renamed when an incremental is merged into it.
    public var asFull: String { String(format: "%04d", seq) + "-full-" + time + ".qcow2" }
}
