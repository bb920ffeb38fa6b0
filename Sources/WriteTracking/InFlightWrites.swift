/// Joins the pieces of split bios on bio-based devices (device-mapper).
///
/// A bio-based driver may split a bio and resubmit the remainder: dm trims
/// the original bio to what is left (`bio_trim` in `dm_split_and_process_bio`)
/// at every target boundary — for a thin LV every pool chunk. The original
/// completes once, and `block_bio_complete` then records only the last piece.
/// Measured on a 64 KiB-chunk thin LV: a 1 MiB write completed as its last
/// 64 KiB. Marking that alone would lose the rest of the write.
///
/// What stays the same through every trim is the end sector. So the tracker
/// also reads `block_bio_queue` (recorded once per bio, before any split)
/// and keeps each queued write's start by its end; a completion whose end
/// matches marks the whole queued range. The mark still happens on
/// completion, never on queue alone (DESIGN §7): a write in flight across a
/// barrier lands in the bitmap that follows the barrier, whole.
///
/// Two writes in flight with the same end keep the lowest start and a count,
/// so each completion marks the union (over-marking is safe; losing is not).
/// A completion with no queued write (it was queued before tracking started)
/// marks what it reports.
struct InFlightWrites {
    private struct Pending {
        var start: UInt64
        var count: Int
    }

    /// Queued writes by end sector.
    private var pending: [UInt64: Pending] = [:]
    /// More queued writes than this without completions means completions are
    /// being missed (or the table would grow without bound): the tracker
    /// reports a loss and starts over.
    let limit: Int

    init(limit: Int = 1 << 16) { self.limit = limit }

    var count: Int { pending.count }

    /// Records a queued write of sectors [sector, sector + sectors). Returns
    /// false when the table overflowed and was cleared (a loss to report).
    mutating func queued(sector: UInt64, sectors: UInt32) -> Bool {
        guard sectors > 0 else { return true }
        let (end, overflow) = sector.addingReportingOverflow(UInt64(sectors))
        guard !overflow else { return true }
        if var p = pending[end] {
            p.start = min(p.start, sector)
            p.count += 1
            pending[end] = p
            return true
        }
        guard pending.count < limit else {
            pending.removeAll()
            return false
        }
        pending[end] = Pending(start: sector, count: 1)
        return true
    }

    /// The sectors a completion of [sector, sector + sectors) covers: from
    /// the start of the queued write that ends where it ends, if there is one.
    mutating func completed(sector: UInt64, sectors: UInt32) -> (sector: UInt64, sectors: UInt64) {
        let (end, overflow) = sector.addingReportingOverflow(UInt64(sectors))
        guard !overflow, sectors > 0, var p = pending[end] else { return (sector, UInt64(sectors)) }
        p.count -= 1
        pending[end] = p.count > 0 ? p : nil
        let start = min(p.start, sector)
        return (start, end - start)
    }

    mutating func removeAll() { pending.removeAll() }
}
