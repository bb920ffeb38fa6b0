import Foundation
import Testing
import TestSupport

/// Whether the package may be installed here: as root with dpkg and loop
/// devices, or in a CI run that requires the root tests (where their absence
/// must fail, not skip).
enum PackagingEnvironment {
    static var canInstall: Bool {
        (TestEnvironment.isRoot && TestEnvironment.hasLoopDevices && Shell.has("dpkg")) || TestEnvironment.rootTestsRequired
    }
    static let skipReason = "needs root, dpkg and /dev/loop-control (it installs and purges the ringback package)"
}

/// The Debian package on this machine: packaging/install-test.sh builds the
/// .deb once (packaging/build-deb.sh: release build, lintian), installs it,
/// runs the installed ringbackd with a scheduled plan on a loop device, backs
/// up through the installed CLI, and removes, reinstalls and purges it. The
/// script prints one "install-test: ok: NAME" line per check; every check
/// below must have passed, so that a script that silently skips one fails here.
@Suite(.enabled(if: PackagingEnvironment.canInstall, Comment(rawValue: PackagingEnvironment.skipReason)))
struct PackageInstallTests {

    /// Every check of install-test.sh, in its order.
    static let checks = [
        "deb-built", "installed", "layout", "no-runpath", "libraries-resolve", "version", "conffile-registered",
        "systemd-analyze-verify", "service-enabled", "manual-pages", "daemon-ready", "plan-success", "plan-images",
        "daemon-backup", "cli-backup", "daemon-stopped", "remove-keeps-config", "reinstall-keeps-config",
        "state-resumed", "purge-removes-config", "fresh-install", "final-purge",
    ]

    /// The package's root folder.
    static var packageRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    /// The release build folder: the test's own build folder (found above the
    /// test bundle by its workspace-state.json) with "-release" appended, as
    /// build-deb.sh names it, so that each checkout keeps one release build.
    static var releaseScratch: String {
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        while dir.path != "/" {
            if FileManager.default.fileExists(atPath: dir.appendingPathComponent("workspace-state.json").path) {
                return dir.path + "-release"
            }
            dir = dir.deletingLastPathComponent()
        }
        return packageRoot.appendingPathComponent(".build-release").path
    }

    @Test(.timeLimit(.minutes(60)))
    func installRunRemoveReinstallPurge() throws {
        let script = Self.packageRoot.appendingPathComponent("packaging/install-test.sh").path
        let result = try Shell.run(["bash", script, "--scratch-path", Self.releaseScratch])
        let output = result.stdout + result.stderr
        let tail = output.split(separator: "\n", omittingEmptySubsequences: false).suffix(60).joined(separator: "\n")
        #expect(result.status == 0, "install-test.sh exited \(result.status):\n\(tail)")
        let passed = Set(result.stdout.split(separator: "\n").compactMap { line -> String? in
            guard line.hasPrefix("install-test: ok: ") else { return nil }
            return String(line.dropFirst("install-test: ok: ".count).prefix { $0 != " " })
        })
        let missing = Self.checks.filter { !passed.contains($0) }
        #expect(missing.isEmpty, "install-test.sh did not pass: \(missing.joined(separator: ", "))")
        let passedAll = result.stdout.contains("install-test: passed: \(Self.checks.count) checks")
        #expect(passedAll, "no 'install-test: passed: \(Self.checks.count) checks' line")
    }
}
