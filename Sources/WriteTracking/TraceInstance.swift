#if canImport(Glibc)
import Glibc
#endif
import BlockDevices
import BlockIO

/// One private tracefs instance, `/sys/kernel/tracing/instances/ringback-<disk>/`,
/// recording the block completions of one whole disk (DESIGN §7).
///
/// Configuration: `options/overwrite` 0 (a full buffer drops new events and
/// counts them in `per_cpu/cpuN/stats`, never overwrites old ones silently);
/// `buffer_percent` 0 (poll(2) on `trace_pipe_raw` wakes on any data, not at
/// half full); `block_rq_complete` and `block_bio_complete` enabled with a
/// filter on `dev` alone, plus `block_bio_queue` for a bio-based disk
/// (device-mapper: see `InFlightWrites`). `rwbs` is never filtered in the kernel: it is
/// decoded in user space.
///
/// The instance outlives the process: opening one that exists re-attaches to
/// it and keeps the events in its buffer.
///
/// One tracker at a time reads an instance: the opener holds flock(LOCK_EX)
/// on the instance directory until `close()`, since two readers of one
/// `trace_pipe_raw` would each see only part of the events.
final class TraceInstance: @unchecked Sendable {
    /// Where tracefs is mounted.
    let root: String
    /// "ringback-loop5".
    let name: String
    /// `root/instances/name`.
    let path: String
    /// The whole disk whose completions the filter lets through.
    let disk: DeviceNumber
    /// True when this open made the directory; false on a re-attach.
    let created: Bool
    /// The disk has no blk-mq queue (`/sys/dev/block/M:m/mq` is absent), as
    /// device-mapper volumes: its splits are joined from `block_bio_queue`.
    let bioBased: Bool
    /// On a re-attach: the existing filter named another device (the events
    /// already buffered may not be this disk's) or the events were off.
    let configurationDiffered: Bool
    /// The descriptor holding the lock; -1 once closed.
    private var lockFD: Int32

    static let defaultRoot = "/sys/kernel/tracing"

    /// The instance name for a disk's kernel name.
    static func name(forDisk disk: String) -> String { "ringback-\(disk)" }

    /// Creates the instance, or re-attaches to it, locks it and (re)applies
    /// its configuration. A failure after creating it removes it again.
    init(disk diskName: String, device: DeviceNumber, bufferKiB: Int, root: String = defaultRoot) throws {
        try TraceInstance.ensureTracefs(root: root)
        self.root = root
        self.name = TraceInstance.name(forDisk: diskName)
        self.path = "\(root)/instances/\(name)"
        self.disk = device
        let bioBased = !Sys.exists("/sys/dev/block/\(device.major):\(device.minor)/mq")
        self.bioBased = bioBased
        let created = try Sys.makeDirectory(path)
        self.created = created
        let fd: Int32
        do {
            fd = try Sys.open(path, O_RDONLY | O_DIRECTORY, purpose: "to lock it")
            guard try Sys.tryLockExclusive(fd, path: path) else {
                Sys.close(fd)
                // Whoever holds it may be configuring what we just created.
                throw TrackingError.busy(path)
            }
        } catch {
            if created, (error as? TrackingError)?.code != .busy { try? TraceInstance.remove(path: path) }
            throw error
        }
        lockFD = fd
        do {
            configurationDiffered = try TraceInstance.configure(path: path, device: device, bufferKiB: bufferKiB,
                                                                bioBased: bioBased, created: created)
        } catch {
            Sys.close(fd)
            if created { try? TraceInstance.remove(path: path) }
            throw error
        }
    }

    deinit { close() }

    /// Gives up the lock. The instance stays; `remove()` needs it closed first.
    func close() {
        Sys.close(lockFD)
        lockFD = -1
    }

    /// Mounts tracefs at `root` when it is not mounted yet: machines boot
    /// without it unless something (perf, trace-cmd, systemd) asked for it.
    static func ensureTracefs(root: String) throws {
        if Sys.exists("\(root)/instances") { return }
        guard Sys.exists(root) else {
            throw TrackingError.tracefsUnavailable(root, "the directory does not exist (a kernel without CONFIG_TRACING?)")
        }
        do {
            try Sys.mountTracefs(at: root)
        } catch {
            // Another process may have mounted it meanwhile.
            if Sys.exists("\(root)/instances") { return }
            throw error
        }
        guard Sys.exists("\(root)/instances") else {
            throw TrackingError.tracefsUnavailable(root, "tracefs is mounted but has no instances/ directory")
        }
    }

    /// The kernel's dev_t encoding, as trace events record it: MKDEV(major,
    /// minor) = major << 20 | minor (include/linux/kdev_t.h) — not glibc's.
    static func kernelDeviceNumber(_ device: DeviceNumber) -> UInt32 {
        device.major << 20 | (device.minor & 0xfffff)
    }

    /// The events the tracker reads: blk-mq devices complete through the
    /// first, bio-based ones (device-mapper) through the second; the third,
    /// only for bio-based disks, joins split bios (`InFlightWrites`).
    static let blockEvents = ["block/block_rq_complete", "block/block_bio_complete"]
    static let queueEvent = "block/block_bio_queue"

    static func blockEvents(bioBased: Bool) -> [String] { bioBased ? blockEvents + [queueEvent] : blockEvents }

    /// Applies the configuration; returns whether an existing instance had a
    /// different filter or had its events off.
    private static func configure(path: String, device: DeviceNumber, bufferKiB: Int, bioBased: Bool,
                                  created: Bool) throws -> Bool {
        var differed = false
        func attribute(_ file: String) throws -> String { try Sys.readFile("\(path)/\(file)").trimmingNewline }
        func set(_ file: String, _ value: String) throws {
            if try attribute(file) != value { try Sys.writeFile("\(path)/\(file)", value) }
        }
        try set("options/overwrite", "0")
        // The barrier writes to trace_marker, which this option can turn off.
        if Sys.exists("\(path)/options/markers") { try set("options/markers", "1") }
        if Sys.exists("\(path)/buffer_percent") { try set("buffer_percent", "0") }
        // A resize that shrinks the buffer counts the events it throws away as
        // overrun (rb_remove_pages()), so the next barrier reports the loss.
        try set("buffer_size_kb", String(max(bufferKiB, 1)))
        let filter = "dev == \(kernelDeviceNumber(device))"
        if !bioBased, Sys.exists("\(path)/events/\(queueEvent)/enable"),
           try attribute("events/\(queueEvent)/enable") != "0" {
            try Sys.writeFile("\(path)/events/\(queueEvent)/enable", "0")
        }
        for event in blockEvents(bioBased: bioBased) {
            let dir = "\(path)/events/\(event)"
            guard Sys.exists(dir) else {
                throw TrackingError.tracefsUnavailable(dir, "the kernel has no such trace event")
            }
            let current = try attribute("events/\(event)/filter")
            if current != filter {
                if !created { differed = true }
                try Sys.writeFile("\(dir)/filter", filter)
            }
            if try attribute("events/\(event)/enable") != "1" {
                if !created { differed = true }
                try Sys.writeFile("\(dir)/enable", "1")
            }
        }
        if try attribute("tracing_on") != "1" {
            if !created { differed = true }
            try Sys.writeFile("\(path)/tracing_on", "1")
        }
        return differed
    }

    func file(_ relative: String) -> String { "\(path)/\(relative)" }

    /// The layout of `system/event` from the instance's own `events/` tree.
    func eventFormat(_ event: String) throws -> EventFormat {
        let formatPath = file("events/\(event)/format")
        return try EventFormat(parsing: try Sys.readFile(formatPath), path: formatPath)
    }

    /// The page header layout, from `events/header_page`.
    func pageHeaderLayout() throws -> PageHeaderLayout {
        let headerPath = file("events/header_page")
        return try PageHeaderLayout(parsing: try Sys.readFile(headerPath), path: headerPath)
    }

    /// The record header types, from `events/header_event`.
    func recordHeaderLayout() throws -> RecordHeaderLayout {
        let headerPath = file("events/header_event")
        return try RecordHeaderLayout(parsing: try Sys.readFile(headerPath), path: headerPath)
    }

    /// The size of one `trace_pipe_raw` read: the sub-buffer size where the
    /// kernel has `buffer_subbuf_size_kb` (6.8+), the page size before.
    func subBufferSize() throws -> Int {
        let attributePath = file("buffer_subbuf_size_kb")
        guard Sys.exists(attributePath) else { return Sys.pageSize }
        let text = try Sys.readFile(attributePath).trimmingNewline
        guard let kib = Int(text), kib > 0 else {
            throw TrackingError.unsupportedFormat(attributePath, "expected a number of KiB, found \"\(text)\"")
        }
        return kib * 1024
    }

    /// The CPUs with a buffer: `per_cpu/cpuN` directories.
    func cpus() throws -> [Int] {
        try Sys.listDirectory(file("per_cpu")).compactMap { $0.hasPrefix("cpu") ? Int($0.dropFirst(3)) : nil }.sorted()
    }

    /// Events lost so far on all CPUs: `overrun` (overwritten; should stay 0
    /// with overwrite off), `commit overrun` (a nested writer wrapped the
    /// buffer) and `dropped events` (a full buffer refused them) from each
    /// `per_cpu/cpuN/stats` (kernel/trace/trace.c, tracing_stats_read()).
    func lossCount(cpus: [Int]) throws -> UInt64 {
        var total: UInt64 = 0
        for cpu in cpus {
            let statsPath = file("per_cpu/cpu\(cpu)/stats")
            total += try TraceInstance.lossCount(stats: try Sys.readFile(statsPath), path: statsPath)
        }
        return total
    }

    /// The sum of the loss counters in the text of one `stats` file.
    static func lossCount(stats: String, path: String) throws(TrackingError) -> UInt64 {
        var total: UInt64 = 0
        for line in stats.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let key = line[..<colon].trimmingSpaces
            guard key == "overrun" || key == "commit overrun" || key == "dropped events" else { continue }
            let text = line[line.index(after: colon)...].trimmingSpaces
            guard let value = UInt64(text) else {
                throw .unsupportedFormat(path, "\(key) is \"\(text)\", not a number")
            }
            total += value
        }
        // `dropped events` is what a non-overwriting buffer counts; without it
        // no loss could be seen at all.
        guard stats.contains("dropped events:") else {
            throw .unsupportedFormat(path, "it has no \"dropped events:\" line")
        }
        return total
    }

    /// Gives up the lock and removes the instance: rmdir(2) disables its
    /// events and frees its buffer. Every other file of it must be closed.
    func remove() throws {
        close()
        try TraceInstance.remove(path: path)
    }

    /// Removes the instance directory at `path` if it exists. EBUSY (a reader
    /// still has a file open, or is just closing it) is retried for a second.
    static func remove(path: String) throws {
        for attempt in 1... {
            let failure: SystemError
            do {
                try Sys.removeDirectory(path)
                return
            } catch {
                failure = error
            }
            if failure.errno == ENOENT { return }
            guard failure.errno == EBUSY && attempt < 20 else { throw failure }
            Sys.sleep(milliseconds: 50)
        }
    }
}
