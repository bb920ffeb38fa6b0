import Catalog
import Foundation
import TestSupport

/// A catalog file in a fresh temporary folder; the folder goes when this does.
final class TestCatalog {
    let dir: TemporaryDirectory
    private(set) var catalog: Catalog!

    init() throws {
        dir = try TemporaryDirectory(prefix: "ringback-catalog")
        catalog = try Catalog(stateDirectory: dir.path)
    }

    var path: String { Catalog.defaultPath(stateDirectory: dir.path) }

    /// Closes the connection (the last reference to the catalog) and opens the file again.
    func reopen() throws {
        catalog = nil
        catalog = try Catalog(path: path)
    }

    /// Closes the connection; SQLite checkpoints the WAL into the file then.
    func close() { catalog = nil }
}

/// Runs the sqlite3 shell on `path`: a reader of the catalog file other than
/// the code that wrote it. Returns its output without the last newline.
@discardableResult
func sqlite3(_ path: String, _ sql: String) throws -> String {
    try Shell.check(["sqlite3", path, sql]).trimmingCharacters(in: .newlines)
}

/// A start of a backup of /dev/test0 into a made-up image path.
func start(_ kind: BackupKind = .full, device: String = "/dev/test0", parent: String? = nil,
           id: String? = nil, chain: String? = nil, at time: Date = Date()) -> BackupStart {
    BackupStart(id: id, jobID: "job-\(UUID().uuidString.prefix(8))", device: device, chain: chain, kind: kind,
                bitmap: kind == .incremental ? "nightly" : nil,
                image: "/repo\(device)/\(kind.rawValue)-\(UUID().uuidString).qcow2",
                parentID: parent, startedAt: time)
}

let someFigures = BackupFigures(bytesRead: 64 << 20, bytesWritten: 3 << 20, imageSize: 4 << 20,
                                imageDigest: "00ff10ab")

/// A folder the test process cannot write to, even as root (root ignores
/// permission bits): a read-only tmpfs mounted on it when we are root, mode
/// 0555 otherwise. Unmounted when released.
final class ReadOnlyFolder {
    let path: String
    private var mounted = false
    /// Held so that the temporary folder is removed only after the unmount.
    private let parent: TemporaryDirectory

    /// An empty writable folder in `dir`, made read-only by `makeReadOnly()`.
    init(in dir: TemporaryDirectory) throws {
        parent = dir
        path = dir.file("ro")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        if TestEnvironment.isRoot {
            try Shell.check(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", path])
            mounted = true
        }
    }

    /// Whether this machine lets us make one: root needs to be allowed to mount.
    static var available: Bool {
        guard TestEnvironment.isRoot else { return true }
        guard let dir = try? TemporaryDirectory(prefix: "ringback-catalog-probe"),
              let probe = try? ReadOnlyFolder(in: dir) else { return false }
        return (try? probe.makeReadOnly()) != nil
    }

    func makeReadOnly() throws {
        if mounted {
            try Shell.check(["mount", "-o", "remount,ro", path])
        } else {
            try Shell.check(["chmod", "-R", "a-w", path])
        }
    }

    deinit {
        if mounted { _ = try? Shell.run(["umount", path]) } else { _ = try? Shell.run(["chmod", "-R", "u+w", path]) }
    }
}
