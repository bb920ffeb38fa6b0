import BlockIO

/// An operation of DESIGN §6's permission table.
public enum BitmapOperation: String, CaseIterable, Sendable {
    case clear
    case enable
    case disable
    case mergeTarget = "merge (target)"
    case mergeSource = "merge (source)"
    case remove
    /// A backup with a bitmap: freezing it under a successor.
    case backup
}

/// What a backup job does with its bitmap when it ends (QEMU's `bitmap-mode`).
public enum BitmapSyncMode: String, CaseIterable, Sendable {
    case onSuccess = "on-success"
    case always
    case never

    /// Whether the bitmap is synced (the successor abdicates) rather than reclaimed:
    /// (the job succeeded or the mode is `always`) and the mode is not `never`.
    public func synchronizes(jobSucceeded: Bool) -> Bool {
        (jobSucceeded || self == .always) && self != .never
    }
}

/// The dirty bitmaps of one device (DESIGN §6): names are unique on it, writes
/// reach every recording bitmap and every successor, and each operation obeys
/// the permission table. A failed operation changes nothing.
public struct BitmapSet: Sendable {
    /// The device's name in messages, e.g. `/dev/sdb`.
    public let device: String
    public let deviceSize: UInt64

    private struct Entry: Sendable {
        var bitmap: DirtyBitmap
        /// Present while a job has frozen `bitmap`; its `isEnabled` is the
        /// parent's state before the freeze, which reclaim restores.
        var successor: DirtyBitmap?
    }
    private var entries: [Entry] = []

    /// An empty set for a device.
    public init(device: String, deviceSize: UInt64) {
        self.device = device
        self.deviceSize = deviceSize
    }

    /// DESIGN §6's table: why `operation` is refused on `bitmap`, or nil when it is allowed.
    /// Busy is reported before inconsistent, as QEMU does.
    public static func refusal(of operation: BitmapOperation, on bitmap: DirtyBitmap) -> BitmapError.Code? {
        let refusedWhenInconsistent = switch operation {
        case .clear, .enable, .disable, .mergeTarget, .mergeSource, .backup: true
        case .remove: false  // the only way out of inconsistent
        }
        if bitmap.isBusy { return .busy }  // every operation, remove included
        if bitmap.isInconsistent && refusedWhenInconsistent { return .inconsistent }
        return nil
    }

    // MARK: queries

    /// The bitmaps in the order they were added (a frozen one as its parent).
    public var bitmaps: [DirtyBitmap] { entries.map(\.bitmap) }

    /// The bitmap named `name`, or nil.
    public subscript(name: String) -> DirtyBitmap? { entries.first { $0.bitmap.name == name }?.bitmap }

    /// The anonymous successor recording writes while a job holds `name`, or nil.
    public func successor(of name: String) -> DirtyBitmap? { entries.first { $0.bitmap.name == name }?.successor }

    /// What a save should write for `name`: while frozen, the parent with the
    /// successor's writes and the parent's pre-job enabled state, as a reclaim
    /// would leave it, so that a save during a job loses no write.
    public func persistable(_ name: String) throws(BitmapError) -> DirtyBitmap {
        let e = entries[try index(of: name)]
        guard let successor = e.successor else { return e.bitmap }
        return Self.reclaimed(e.bitmap, successor)
    }

    /// Saves `name` atomically as `persistable` gives it (see `DirtyBitmap.save`)
    /// and counts the save in the generation of the bitmap held here.
    public mutating func save(_ name: String, to path: String, identity: DeviceIdentity, bootID: String, inUse: Bool) throws {
        let i = try index(of: name)
        var b = try persistable(name)
        try b.save(to: path, identity: identity, bootID: bootID, inUse: inUse)
        entries[i].bitmap.generation = b.generation
    }

    // MARK: add, remove, clear, enable, disable

    /// Adds a new, clean bitmap.
    @discardableResult
    public mutating func add(name: String, granularity: UInt64 = DirtyBitmap.defaultGranularity,
                             enabled: Bool = true, persistent: Bool = false) throws(BitmapError) -> DirtyBitmap {
        let b: DirtyBitmap
        do { b = try DirtyBitmap(name: name, deviceSize: deviceSize, granularity: granularity, enabled: enabled, persistent: persistent) }
        catch { throw error.on(device) }
        try add(b)
        return b
    }

    /// Adds an existing bitmap (one loaded from its file). It must cover the device and not be busy.
    public mutating func add(_ bitmap: DirtyBitmap) throws(BitmapError) {
        do { try DirtyBitmap.validate(name: bitmap.name) } catch { throw error.on(device) }
        guard self[bitmap.name] == nil else { throw .alreadyExists(bitmap.name, device: device) }
        guard bitmap.deviceSize == deviceSize else {
            throw BitmapError(.sizeMismatch, bitmap: bitmap.name, device: device,
                              "Bitmap '\(bitmap.name)' covers \(bitmap.deviceSize) bytes but the device has \(deviceSize)")
        }
        var b = bitmap
        b.isBusy = false  // a job's hold never outlives the set that granted it
        entries.append(Entry(bitmap: b))
    }

    /// Removes a bitmap and returns it (so that the caller can delete its file).
    /// Refused only while busy: removing is the way out of inconsistent.
    @discardableResult
    public mutating func remove(_ name: String) throws(BitmapError) -> DirtyBitmap {
        let i = try permitted(.remove, name)
        return entries.remove(at: i).bitmap
    }

    /// Clears every bit.
    public mutating func clear(_ name: String) throws(BitmapError) {
        let i = try permitted(.clear, name)
        entries[i].bitmap.clear()
    }

    /// Starts recording writes.
    public mutating func enable(_ name: String) throws(BitmapError) {
        let i = try permitted(.enable, name)
        entries[i].bitmap.isEnabled = true
    }

    /// Stops recording writes; the bits stay.
    public mutating func disable(_ name: String) throws(BitmapError) {
        let i = try permitted(.disable, name)
        entries[i].bitmap.isEnabled = false
    }

    /// ORs the bitmaps `sources` into `target`; granularities may differ. Every
    /// check comes first and the result is stored whole, so on any failure the
    /// target is unchanged.
    public mutating func merge(_ sources: [String], into target: String) throws(BitmapError) {
        let t = try permitted(.mergeTarget, target)
        var merged = entries[t].bitmap
        for name in sources {
            let s = try permitted(.mergeSource, name)
            do { try merged.merge(from: entries[s].bitmap) } catch { throw error.on(device) }
        }
        entries[t].bitmap = merged
    }

    // MARK: recording

    /// Records a write on the device in every enabled bitmap and every enabled successor.
    public mutating func mark(offset: UInt64, length: UInt64) {
        for i in entries.indices {
            entries[i].bitmap.mark(offset: offset, length: length)
            entries[i].successor?.mark(offset: offset, length: length)
        }
    }

    /// The tracer lost events: every bitmap that was recording (enabled bitmaps
    /// and successors) may have missed writes. Disabled bitmaps record nothing
    /// anyway, so they stay consistent; a frozen parent inherits the doubt from
    /// its successor at abdicate or reclaim.
    public mutating func markInconsistent() {
        for i in entries.indices {
            if entries[i].bitmap.isEnabled { entries[i].bitmap.markInconsistent() }
            if entries[i].successor?.isEnabled == true { entries[i].successor?.markInconsistent() }
        }
    }

    // MARK: the successor life cycle (DESIGN §6)

    /// Freezes `name` for a backup job: the parent becomes disabled and busy, and an
    /// anonymous successor, enabled if the parent was, records the writes made from
    /// now on. Returns the frozen parent: the granules the job must copy.
    @discardableResult
    public mutating func createSuccessor(_ name: String) throws(BitmapError) -> DirtyBitmap {
        let i = try permitted(.backup, name)
        let parent = entries[i].bitmap
        entries[i].successor = DirtyBitmap(unchecked: "", deviceSize: deviceSize, granularity: parent.granularity,
                                           enabled: parent.isEnabled, persistent: false)
        entries[i].bitmap.isEnabled = false
        entries[i].bitmap.isBusy = true
        return entries[i].bitmap
    }

    /// Moves the point in time of a freeze to now (a converging backup's final
    /// freeze): what the successor recorded joins the frozen parent (the job
    /// copies it too) and the successor starts empty. A later reclaim still
    /// gives back every write; a later abdicate keeps only those from now on.
    public mutating func absorbSuccessor(_ name: String) throws(BitmapError) {
        let i = try index(of: name)
        guard let s = entries[i].successor else { throw .noSuccessor(name, device: device) }
        // Same device, same granularity: the merge cannot fail.
        try! entries[i].bitmap.merge(from: s)
        entries[i].successor!.clear()
    }

    /// Ends a freeze by syncing: the successor takes the name (and the parent's
    /// persistence and generation); the parent and its bits are dropped.
    public mutating func abdicate(_ name: String) throws(BitmapError) {
        let i = try index(of: name)
        guard var s = entries[i].successor else { throw .noSuccessor(name, device: device) }
        let parent = entries[i].bitmap
        s.name = parent.name
        s.isPersistent = parent.isPersistent
        s.generation = parent.generation
        entries[i] = Entry(bitmap: s)
    }

    /// Ends a freeze without syncing: parent |= successor, and the parent gets back
    /// its pre-job enabled state and is no longer busy.
    public mutating func reclaim(_ name: String) throws(BitmapError) {
        let i = try index(of: name)
        guard let s = entries[i].successor else { throw .noSuccessor(name, device: device) }
        entries[i] = Entry(bitmap: Self.reclaimed(entries[i].bitmap, s))
    }

    /// Applies the sync rule when a job ends: abdicate when
    /// `mode.synchronizes(jobSucceeded:)`, reclaim otherwise; a failed `always`
    /// job then merges back `uncopied`, the granules it never copied. Without
    /// `uncopied` such a job reclaims instead, which keeps a superset of those
    /// bits. Returns whether the bitmap was synced.
    @discardableResult
    public mutating func finish(_ name: String, jobSucceeded: Bool, mode: BitmapSyncMode,
                                uncopied: DirtyBitmap? = nil) throws(BitmapError) -> Bool {
        let i = try index(of: name)
        guard entries[i].successor != nil else { throw .noSuccessor(name, device: device) }
        let mergeBack = !jobSucceeded && mode == .always
        if mergeBack, let u = uncopied, u.deviceSize != deviceSize {
            throw BitmapError(.sizeMismatch, bitmap: name, device: device,
                              "The uncopied bitmap of the job on '\(name)' covers \(u.deviceSize) bytes but the device has \(deviceSize)")
        }
        let synced = mode.synchronizes(jobSucceeded: jobSucceeded) && !(mergeBack && uncopied == nil)
        if synced {
            try abdicate(name)
            if mergeBack, let u = uncopied {
                // Sizes were checked above, so this cannot throw.
                try entries[i].bitmap.merge(from: u)
            }
        } else {
            try reclaim(name)
        }
        return synced
    }

    // MARK: private

    private static func reclaimed(_ parent: DirtyBitmap, _ successor: DirtyBitmap) -> DirtyBitmap {
        var p = parent
        // Same device, same granularity: the merge is a word-wise OR and cannot fail.
        try! p.merge(from: successor)
        p.isEnabled = successor.isEnabled
        p.isBusy = false
        return p
    }

    private func index(of name: String) throws(BitmapError) -> Int {
        guard let i = entries.firstIndex(where: { $0.bitmap.name == name }) else { throw .notFound(name, device: device) }
        return i
    }

    /// The index of `name` once the permission table allows `operation` on it.
    private func permitted(_ operation: BitmapOperation, _ name: String) throws(BitmapError) -> Int {
        let i = try index(of: name)
        if let code = Self.refusal(of: operation, on: entries[i].bitmap) { throw .refused(code, name, device: device) }
        return i
    }
}
