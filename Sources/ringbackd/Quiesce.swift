import BlockDevices
import ControlProtocol
import Foundation
import Quiesce

/// How ringbackd quiesces (DESIGN §11), from its options.
struct QuiesceSettings {
    var hooks = Hooks(directory: "/etc/ringback/hooks.d", timeout: 60)
    /// The watchdog thaws after this long without word from the daemon.
    var freezeTimeout = 10.0
    /// The executable that runs `FreezeWatchdog` (ringbackd itself).
    var watchdog = "/proc/self/exe"
    static let watchdogFlag = "--x-freeze-watchdog"
}

/// The devices of a transaction while they are quiesced: the hooks have run,
/// their filesystems are frozen through a watchdog.
final class QuiescedSection: @unchecked Sendable {
    let devices: [String]
    let hold: FreezeHold
    let environment: [String: String]
    init(devices: [String], hold: FreezeHold, environment: [String: String]) {
        self.devices = devices
        self.hold = hold
        self.environment = environment
    }
}

extension Daemon {
    /// Runs the pre-freeze hooks, freezes the filesystems mounted from
    /// `devices` (through the watchdog) and runs the frozen hooks. On any
    /// failure everything taken is given back (thaw, post-thaw hooks) and the
    /// error says which step failed.
    func quiesce(_ devices: [String]) throws -> QuiescedSection {
        let plan: FreezePlan
        do { plan = try FreezePlan.plan(devices: devices, table: MountTable.current()) } catch {
            throw CommandError("cannot find the filesystems mounted from \(devices.joined(separator: ", ")): \(error)")
        }
        var environment = ["RINGBACK_DEVICES": devices.joined(separator: " "),
                           "RINGBACK_MOUNTS": plan.mountPoints.joined(separator: " ")]
        do { try quiesceSettings.hooks.run(.preFreeze, environment: environment) } catch {
            runPostThawHooks(environment)
            throw CommandError("quiesce failed before the freeze: \(error); nothing was changed")
        }
        let hold: FreezeHold
        do {
            hold = try FreezeHold(plan: plan, timeout: quiesceSettings.freezeTimeout,
                                  executable: quiesceSettings.watchdog, arguments: [QuiesceSettings.watchdogFlag])
        } catch {
            runPostThawHooks(environment)
            throw CommandError("cannot freeze \(plan.mountPoints.joined(separator: ", ")): \(error); nothing was changed")
        }
        if !plan.mountPoints.isEmpty {
            emit("X_FILESYSTEMS_FROZEN", .object(["mount-points": .array(plan.mountPoints.map { .string($0) })]))
        }
        environment["RINGBACK_FROZEN"] = plan.mountPoints.isEmpty ? "0" : "1"
        let section = QuiescedSection(devices: devices, hold: hold, environment: environment)
        do { try quiesceSettings.hooks.run(.frozen, environment: environment) } catch {
            resume(section)
            throw CommandError("quiesce failed inside the freeze: \(error); nothing was changed")
        }
        return section
    }

    /// Thaws (if the watchdog has not already) and runs the post-thaw hooks.
    /// Returns how the freeze ended.
    @discardableResult
    func resume(_ section: QuiescedSection, hooksInBackground: Bool = false) -> FreezeHold.Thaw {
        let thaw = section.hold.thaw()
        if !section.hold.plan.mountPoints.isEmpty {
            var data: [String: JSONValue] = ["mount-points": .array(section.hold.plan.mountPoints.map { .string($0) })]
            switch thaw {
            case .requested(let s): data["seconds"] = .double(s); data["expired"] = .bool(false)
            case .expired(let s): data["seconds"] = .double(s); data["expired"] = .bool(true)
            }
            emit("X_FILESYSTEMS_THAWED", .object(data))
            thawed(section, thaw)
        }
        if hooksInBackground {
            let env = section.environment
            DispatchQueue.global().async { [self] in runPostThawHooks(env) }
        } else {
            runPostThawHooks(section.environment)
        }
        return thaw
    }

    private func runPostThawHooks(_ environment: [String: String]) {
        do { try quiesceSettings.hooks.run(.postThaw, environment: environment) } catch {
            logger.error("post-thaw: \(error)", metadata: ["devices": "\(environment["RINGBACK_DEVICES"] ?? "")"])
        }
    }
}

/// A freeze handed from a transaction to its `frozen` backup jobs: held while
/// any of them copies, kept alive by pings while they make progress, thawed
/// when the last one ends. If the watchdog's timeout passes anyway, the
/// copies are no longer of one point in time and the jobs fail.
final class SharedFreeze: @unchecked Sendable {
    let section: QuiescedSection
    private let lock = NSLock()
    private var holders: [Job] = []
    private var released = false
    private unowned let daemon: Daemon

    init(section: QuiescedSection, jobs: [Job], daemon: Daemon) {
        self.section = section
        self.daemon = daemon
        holders = jobs
        let pinger = Thread { [self] in keepAlive() }
        pinger.name = "ringbackd-freeze-keepalive"
        pinger.start()
    }

    /// A job's copy ended; the last one thaws.
    func release(_ job: Job) {
        let last: Bool = lock.withLock {
            holders.removeAll { $0 === job }
            guard holders.isEmpty, !released else { return false }
            released = true
            return true
        }
        if last { daemon.resume(section, hooksInBackground: true) }
    }

    /// Pings the watchdog a few times per timeout while the copies progress.
    private func keepAlive() {
        var lastProgress: UInt64 = 0
        let interval = max(0.05, section.hold.timeout / 4)
        while true {
            Thread.sleep(forTimeInterval: interval)
            let (done, jobs) = lock.withLock { (released, holders) }
            if done { return }
            let progress = jobs.reduce(0) { $0 + $1.control.bytesRead }
            // No progress (a hung device, a hung daemon): let the clock run,
            // so the watchdog thaws and the jobs fail rather than hold a freeze forever.
            let paused = jobs.contains { $0.control.isPaused }
            let left = (progress != lastProgress || lastProgress == 0) && !paused ? section.hold.ping() : section.hold.remaining()
            lastProgress = progress
            if left <= 0 {
                daemon.jobs.freezeExpired(jobs, timeout: section.hold.timeout)
                return
            }
        }
    }
}
