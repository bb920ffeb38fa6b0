import Testing
@testable import WriteTracking

/// Joining the pieces of split bios (dm trims a bio at every target boundary;
/// only the last piece's range is traced at completion).
struct InFlightWritesTests {
    @Test func aSplitBioCompletesAsItsWholeQueuedRange() {
        var w = InFlightWrites()
        // 1 MiB at sector 2048, split at 64 KiB (128-sector) boundaries: the
        // completion reports the last 128 sectors only.
        do { let ok = w.queued(sector: 2048, sectors: 2048); #expect(ok) }
        let r = w.completed(sector: 2048 + 1920, sectors: 128)
        #expect(r.sector == 2048 && r.sectors == 2048)
        #expect(w.count == 0)
    }

    @Test func aCompletionWithoutAQueuedWriteMarksWhatItReports() {
        var w = InFlightWrites()
        do { let ok = w.queued(sector: 0, sectors: 8); #expect(ok) }
        let r = w.completed(sector: 100, sectors: 8)
        #expect(r.sector == 100 && r.sectors == 8)
        #expect(w.count == 1)
    }

    @Test func twoWritesWithOneEndEachMarkTheUnion() {
        var w = InFlightWrites()
        do { let ok = w.queued(sector: 100, sectors: 28); #expect(ok) }
        do { let ok = w.queued(sector: 64, sectors: 64); #expect(ok) }
        let first = w.completed(sector: 120, sectors: 8)
        #expect(first.sector == 64 && first.sectors == 64)
        let second = w.completed(sector: 100, sectors: 28)
        #expect(second.sector == 64 && second.sectors == 64)
        #expect(w.count == 0)
        // Both completed: a third completion at that end is on its own.
        let third = w.completed(sector: 120, sectors: 8)
        #expect(third.sector == 120 && third.sectors == 8)
    }

    @Test func anUnsplitBioIsUnchanged() {
        var w = InFlightWrites()
        do { let ok = w.queued(sector: 4096, sectors: 384); #expect(ok) }
        let r = w.completed(sector: 4096, sectors: 384)
        #expect(r.sector == 4096 && r.sectors == 384)
    }

    @Test func overflowingTheTableIsReportedAsALoss() {
        var w = InFlightWrites(limit: 4)
        for i in 0..<4 { let ok = w.queued(sector: UInt64(i) * 100, sectors: 8); #expect(ok) }
        do { let ok = w.queued(sector: 1000, sectors: 8); #expect(!ok) }
        #expect(w.count == 0)
    }

    @Test func emptyAndOverflowingRangesAreIgnored() {
        var w = InFlightWrites()
        do { let ok = w.queued(sector: 10, sectors: 0); #expect(ok) }
        do { let ok = w.queued(sector: UInt64.max - 1, sectors: 8); #expect(ok) }
        #expect(w.count == 0)
    }
}
