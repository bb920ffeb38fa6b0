import BlockIO
import PropertyBased
import Testing
@testable import DirtyBitmaps

/// The states a bitmap can be in when an operation reaches it.
enum BitmapState: String, CaseIterable, CustomStringConvertible {
    case normal, disabled, busy, inconsistent
    var description: String { rawValue }
}

let device = "/dev/test0"
let size: UInt64 = 64 << 20

/// A set holding "b" in `state` (with a few bits) and a normal bitmap "other".
func makeSet(_ state: BitmapState) throws -> BitmapSet {
    var set = BitmapSet(device: device, deviceSize: size)
    var b = try DirtyBitmap(name: "b", deviceSize: size)
    b.mark(offset: 1 << 20, length: 4096)
    if state == .inconsistent { b.markInconsistent() }
    try set.add(b)
    var other = try DirtyBitmap(name: "other", deviceSize: size, granularity: 4096)
    other.mark(offset: 8 << 20, length: 1)
    try set.add(other)
    if state == .disabled { try set.disable("b") }
    if state == .busy { try set.createSuccessor("b") }
    return set
}

@Suite struct PermissionTableTests {
    /// DESIGN §6, written out independently of the implementation's switch.
    static let refusedWhen: [BitmapOperation: Set<BitmapState>] = [
        .clear: [.busy, .inconsistent],
        .enable: [.busy, .inconsistent],
        .disable: [.busy, .inconsistent],
        .mergeTarget: [.busy, .inconsistent],
        .mergeSource: [.busy, .inconsistent],
        .remove: [.busy],
        .backup: [.busy, .inconsistent],
    ]

    static func perform(_ op: BitmapOperation, on set: inout BitmapSet) throws {
        switch op {
        case .clear: try set.clear("b")
        case .enable: try set.enable("b")
        case .disable: try set.disable("b")
        case .mergeTarget: try set.merge(["other"], into: "b")
        case .mergeSource: try set.merge(["b"], into: "other")
        case .remove: try set.remove("b")
        case .backup: try set.createSuccessor("b")
        }
    }

    /// Every operation × every state: refused exactly where the table says, with
    /// QEMU's message naming the bitmap and the device, and a refusal changes nothing.
    @Test(arguments: BitmapOperation.allCases, BitmapState.allCases)
    func everyOperationInEveryState(op: BitmapOperation, state: BitmapState) throws {
        var set = try makeSet(state)
        let before = (set.bitmaps, set.successor(of: "b"))
        let refused = Self.refusedWhen[op]!.contains(state)
        #expect(BitmapSet.refusal(of: op, on: set["b"]!) == (refused ? (state == .busy ? .busy : .inconsistent) : nil))
        if refused {
            let e = #expect(throws: BitmapError.self) { try Self.perform(op, on: &set) }
            let expected = state == .busy
                ? "Bitmap 'b' is currently in use by another operation and cannot be used (device /dev/test0)"
                : "Bitmap 'b' is inconsistent and cannot be used (device /dev/test0)"
            #expect(e?.description == expected)
            #expect(e?.bitmap == "b" && e?.device == device)
            #expect(set.bitmaps == before.0 && set.successor(of: "b") == before.1)
        } else {
            try Self.perform(op, on: &set)
            // The operation took effect.
            switch op {
            case .clear: #expect(set["b"]!.isEmpty)
            case .enable: #expect(set["b"]!.isEnabled)
            case .disable: #expect(!set["b"]!.isEnabled)
            case .mergeTarget: #expect(set["b"]!.isDirty(8 << 4))
            case .mergeSource: #expect(set["other"]!.isDirty(1 << 8))
            case .remove: #expect(set["b"] == nil && set.bitmaps.map(\.name) == ["other"])
            case .backup: #expect(set["b"]!.isBusy && set.successor(of: "b") != nil)
            }
        }
    }

    @Test func busyIsReportedBeforeInconsistentAndReclaimKeepsTheDoubt() throws {
        var set = try makeSet(.busy)
        set.markInconsistent()  // the successor (recording) becomes inconsistent
        set.mark(offset: 0, length: 1)
        try set.reclaim("b")
        #expect(set["b"]!.isInconsistent)
        var b = set["b"]!
        b.isBusy = true
        #expect(BitmapSet.refusal(of: .remove, on: b) == .busy)
        #expect(BitmapSet.refusal(of: .clear, on: b) == .busy)
    }
}

@Suite struct BitmapSetTests {
    @Test func addRemoveAndTheirMessages() throws {
        var set = BitmapSet(device: "/dev/sdb", deviceSize: size)
        try set.add(name: "nightly")
        let dup = #expect(throws: BitmapError.self) { try set.add(name: "nightly") }
        #expect(dup?.description == "Bitmap already exists: nightly (device /dev/sdb)")
        let missing = #expect(throws: BitmapError.self) { try set.clear("x") }
        #expect(missing?.description == "Dirty bitmap 'x' not found (device /dev/sdb)")
        let bad = #expect(throws: BitmapError.self) { try set.add(name: "w", granularity: 64_000) }
        #expect(bad?.description == "Cannot add bitmap 'w': granularity 64000 is not a power of two of at least 512 (device /dev/sdb)")
        let wrongSize = #expect(throws: BitmapError.self) { try set.add(DirtyBitmap(name: "s", deviceSize: 1 << 20)) }
        #expect(wrongSize?.code == .sizeMismatch)
        #expect(try set.remove("nightly").name == "nightly")
        #expect(set.bitmaps.isEmpty)
    }

    @Test func writesReachEnabledBitmapsAndSuccessorsOnly() throws {
        var set = BitmapSet(device: device, deviceSize: size)
        try set.add(name: "on")
        try set.add(name: "off", enabled: false)
        try set.add(name: "job")
        let frozen = try set.createSuccessor("job")
        #expect(frozen.isBusy && !frozen.isEnabled)
        set.mark(offset: 0, length: 1)
        #expect(set["on"]!.count == 65_536)
        #expect(set["off"]!.isEmpty)
        #expect(set["job"]!.isEmpty)
        #expect(set.successor(of: "job")!.count == 65_536)
        #expect(set.successor(of: "job")!.name.isEmpty)
    }

    @Test func lostEventsMakeRecordingBitmapsInconsistent() throws {
        var set = BitmapSet(device: device, deviceSize: size)
        try set.add(name: "on")
        try set.add(name: "off", enabled: false)
        try set.add(name: "job")
        try set.createSuccessor("job")
        set.markInconsistent()
        #expect(set["on"]!.isInconsistent)
        #expect(!set["off"]!.isInconsistent)
        #expect(set.successor(of: "job")!.isInconsistent)
        try set.abdicate("job")
        #expect(set["job"]!.isInconsistent)
    }

    @Test func lifeCycleErrors() throws {
        var set = try makeSet(.normal)
        #expect(throws: BitmapError.self) { try set.abdicate("b") }
        #expect(throws: BitmapError.self) { try set.reclaim("b") }
        #expect(throws: BitmapError.self) { try set.finish("b", jobSucceeded: true, mode: .onSuccess) }
        try set.createSuccessor("b")
        let again = #expect(throws: BitmapError.self) { try set.createSuccessor("b") }
        #expect(again?.code == .busy)
    }

    @Test func persistableDuringAJobHoldsEveryWrite() throws {
        var set = try makeSet(.busy)
        set.mark(offset: 32 << 20, length: 1)
        let p = try set.persistable("b")
        #expect(!p.isBusy && p.isEnabled)
        #expect(Array(p.dirtyExtents) == [Extent(offset: 1 << 20, length: 65_536), Extent(offset: 32 << 20, length: 65_536)])
        #expect(set["b"]!.isBusy && set["b"]!.count == 65_536)  // the set itself is untouched
    }

    @Test(arguments: BitmapSyncMode.allCases, [true, false])
    func syncRule(mode: BitmapSyncMode, succeeded: Bool) {
        let expected = switch (mode, succeeded) {
        case (.onSuccess, true), (.always, true), (.always, false): true
        case (.onSuccess, false), (.never, _): false
        }
        #expect(mode.synchronizes(jobSucceeded: succeeded) == expected)
    }

    /// The end of a job under each mode and outcome, against the model: synced
    /// leaves the writes made during the job (plus, for a failed `always` job, the
    /// granules it never copied); not synced leaves the bits before ∪ during.
    @Test func finishAppliesTheSyncRule() async {
        let cases = Gen.int(in: 0...5)
        await propertyCheck(count: 120, input: cases, Geometry.writes, Geometry.writes, Geometry.writes) { c, rawPre, rawDuring, rawUncopied in
            let mode = BitmapSyncMode.allCases[c / 2], succeeded = c % 2 == 0
            let g: UInt64 = 65_536
            let pre = Geometry.writes(from: rawPre, deviceSize: size, granularity: 1 << 20)
            let during = Geometry.writes(from: rawDuring, deviceSize: size, granularity: 1 << 20)
            var set = BitmapSet(device: device, deviceSize: size)
            try set.add(name: "b", granularity: g)
            set.mark(pre)
            let frozen = try set.createSuccessor("b")
            set.mark(during)
            // The job copied some granules of the frozen bitmap; a 4 KiB copy bitmap holds the rest.
            var uncopied = try DirtyBitmap(name: "copy", deviceSize: size, granularity: 4096)
            try uncopied.merge(from: frozen)
            for w in Geometry.writes(from: rawUncopied, deviceSize: size, granularity: 1 << 20) {
                uncopied.reset(offset: w.offset, length: w.length)
            }
            let synced = try set.finish("b", jobSucceeded: succeeded, mode: mode, uncopied: uncopied)
            #expect(synced == mode.synchronizes(jobSucceeded: succeeded))

            var model = NaiveBitmap(granularity: g, deviceSize: size)
            model.mark(during)
            if synced {
                if mode == .always && !succeeded {
                    var u = NaiveBitmap(granularity: 4096, deviceSize: size)
                    for e in uncopied.dirtyExtents { u.mark(offset: e.offset, length: e.length) }
                    model.merge(u)
                }
            } else {
                model.mark(pre)
            }
            let b = set["b"]!
            #expect(model.matches(b))
            #expect(b.isEnabled && !b.isBusy && set.successor(of: "b") == nil)
        }
    }

    @Test func failedAlwaysWithoutUncopiedBitsReclaims() throws {
        var set = try makeSet(.normal)
        try set.createSuccessor("b")
        set.mark(offset: 0, length: 1)
        #expect(try set.finish("b", jobSucceeded: false, mode: .always, uncopied: nil) == false)
        #expect(set["b"]!.isDirty(0) && set["b"]!.isDirty(16))
    }

    /// After reclaim no bit set before the job is lost and every write made during
    /// the job is present (and nothing else); the parent gets back its enabled state.
    /// After abdicate the bitmap holds exactly the writes made since the successor
    /// was created. A disabled parent's successor is disabled too (QEMU): it records nothing.
    @Test func reclaimAndAbdicateKeepTheRightBits() async {
        await propertyCheck(count: 200, input: Geometry.granularityBits, Gen.bool, Geometry.writes, Geometry.writes) {
            bits, enabled, rawPre, rawDuring in
            let g = UInt64(1) << bits
            let pre = Geometry.writes(from: rawPre, deviceSize: size, granularity: 1 << 20)
            let during = Geometry.writes(from: rawDuring, deviceSize: size, granularity: 1 << 20)
            var set = BitmapSet(device: device, deviceSize: size)
            try set.add(name: "b", granularity: g)
            set.mark(pre)
            if !enabled { try set.disable("b") }
            let before = set["b"]!

            var reclaiming = set, abdicating = set
            try reclaiming.createSuccessor("b")
            reclaiming.mark(during)
            try reclaiming.reclaim("b")
            try abdicating.createSuccessor("b")
            abdicating.mark(during)
            try abdicating.abdicate("b")

            var duringModel = NaiveBitmap(granularity: g, deviceSize: size)
            if enabled { duringModel.mark(during) }
            var both = duringModel
            both.mark(pre)
            let r = reclaiming["b"]!, a = abdicating["b"]!
            #expect(both.matches(r))
            #expect((0..<r.granuleCount).allSatisfy { !before.isDirty($0) || r.isDirty($0) })
            #expect(duringModel.matches(a))
            #expect(r.isEnabled == enabled && a.isEnabled == enabled)
            #expect(!r.isBusy && !a.isBusy && a.name == "b")
            #expect(reclaiming.successor(of: "b") == nil && abdicating.successor(of: "b") == nil)
        }
    }

    /// A merge that fails anywhere (a busy, inconsistent or missing source, at any
    /// position in the list) leaves the target exactly as it was.
    @Test func failedMergeLeavesTheTargetUnchanged() async {
        await propertyCheck(count: 100, input: Gen.int(in: 0...2), Gen.int(in: 0...3), Geometry.writes, Geometry.writes) {
            failure, position, rawT, rawS in
            var set = BitmapSet(device: device, deviceSize: size)
            try set.add(name: "t", granularity: 4096)
            set.mark(Geometry.writes(from: rawT, deviceSize: size, granularity: 1 << 20))
            try set.disable("t")
            for i in 0..<3 { try set.add(name: "s\(i)", granularity: 512 << i) }
            set.mark(Geometry.writes(from: rawS, deviceSize: size, granularity: 1 << 20))
            var bad = try DirtyBitmap(name: "bad", deviceSize: size)
            bad.mark(offset: 0, length: size)
            if failure == 1 { bad.markInconsistent() }
            if failure != 2 { try set.add(bad) }
            if failure == 0 { try set.createSuccessor("bad") }
            var sources = ["s0", "s1", "s2"]
            sources.insert("bad", at: position)
            let before = set["t"]!
            let e = #expect(throws: BitmapError.self) { try set.merge(sources, into: "t") }
            #expect(e?.code == [BitmapError.Code.busy, .inconsistent, .notFound][failure])
            #expect(e?.bitmap == "bad")
            #expect(set["t"]! == before)
        }
    }
}
