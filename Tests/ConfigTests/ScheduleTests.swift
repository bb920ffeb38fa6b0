@testable import Config
import Foundation
import PropertyBased
import Testing

/// Schedules: examples across day, month, year and leap-day boundaries, and
/// properties checked against Foundation's Gregorian calendar in UTC as an
/// independent oracle.
@Suite struct ScheduleTests {
    /// A UTC time written as "2026-01-31T23:00:00Z".
    static func utc(_ s: String) -> Date { CivilTime.parseISO8601(s)! }

    static func next(_ schedule: String, after: String) throws -> String? {
        try Schedule(parsing: schedule).next(after: utc(after)).map(CivilTime.iso8601)
    }

    @Test("calendar examples", arguments: [
        ("daily 02:30", "2026-01-31T23:00:00Z", "2026-02-01T02:30:00Z"),      // month rollover
        ("daily 02:30", "2026-02-01T02:30:00Z", "2026-02-02T02:30:00Z"),      // strictly after
        ("daily 02:30", "2026-02-01T02:29:59Z", "2026-02-01T02:30:00Z"),
        ("daily 02:30 UTC", "2025-12-31T03:00:00Z", "2026-01-01T02:30:00Z"),  // year rollover
        ("*-*-* 02:30", "2025-12-31T03:00:00Z", "2026-01-01T02:30:00Z"),
        ("Mon..Fri 01:00", "2026-01-02T02:00:00Z", "2026-01-05T01:00:00Z"),   // Friday → Monday
        ("Mon..Fri 01:00", "2026-01-04T12:00:00Z", "2026-01-05T01:00:00Z"),   // Sunday → Monday
        ("Sat,Sun 06:00:30", "2026-01-05T00:00:00Z", "2026-01-10T06:00:30Z"),
        ("*-02-29 12:00", "2025-03-01T00:00:00Z", "2028-02-29T12:00:00Z"),    // next leap day
        ("*-02-29 12:00", "2096-03-01T00:00:00Z", "2104-02-29T12:00:00Z"),    // 2100 is no leap year
        ("*-*-31 00:00", "2026-04-01T00:00:00Z", "2026-05-31T00:00:00Z"),     // April has no 31st
        ("*-*-31 00:00", "2026-07-31T00:00:00Z", "2026-08-31T00:00:00Z"),
        ("hourly", "2026-03-01T10:59:59Z", "2026-03-01T11:00:00Z"),
        ("hourly", "2026-12-31T23:30:00Z", "2027-01-01T00:00:00Z"),
        ("daily", "2028-02-28T00:00:00Z", "2028-02-29T00:00:00Z"),
        ("weekly", "2026-01-05T00:00:00Z", "2026-01-12T00:00:00Z"),
        ("monthly", "2026-01-31T12:00:00Z", "2026-02-01T00:00:00Z"),
        ("Sat *-*-1..7 03:00", "2026-01-04T00:00:00Z", "2026-02-07T03:00:00Z"), // first Saturday of a month
        ("*-*-* *:0/15", "2026-01-01T10:44:59Z", "2026-01-01T10:45:00Z"),
        ("*-*-* *:0/15", "2026-01-01T23:45:00Z", "2026-01-02T00:00:00Z"),
        ("*-*-* 08..10:00,30", "2026-01-01T10:30:00Z", "2026-01-02T08:00:00Z"),
        ("12-25 07:00", "2026-12-25T07:00:01Z", "2027-12-25T07:00:00Z"),
        ("2027-06-15 08:00", "2026-01-01T00:00:00Z", "2027-06-15T08:00:00Z"),
        ("Mon 2024-*-29 00:00", "2024-01-01T00:00:00Z", "2024-01-29T00:00:00Z"),
        ("minutely", "1969-12-31T23:59:30Z", "1970-01-01T00:00:00Z"),          // before the epoch
    ])
    func calendar(spec: String, after: String, expected: String) throws {
        #expect(try Self.next(spec, after: after) == expected)
    }

    @Test("calendars that never come again have no next run")
    func never() throws {
        #expect(try Self.next("2027-06-15 08:00", after: "2027-06-15T08:00:00Z") == nil)
        #expect(try Self.next("Mon 2026-01-01 00:00", after: "2025-01-01T00:00:00Z") == nil)   // a Thursday
        #expect(try Self.next("2024-02-29 00:00", after: "2024-03-01T00:00:00Z") == nil)
        // A leap day in years that have none is refused outright.
        #expect(throws: ValueError.self) { try Schedule(parsing: "2025,2026-02-29 00:00") }
    }

    @Test("fractions of a second: the next run is the first whole matching second strictly later")
    func fractions() throws {
        let s = try Schedule(parsing: "daily 02:30")
        let at = Self.utc("2026-02-01T02:30:00Z")
        #expect(s.next(after: at.addingTimeInterval(-0.25)) == at)
        #expect(s.next(after: at.addingTimeInterval(0.25)) == at.addingTimeInterval(86_400))
    }

    @Test("intervals: the previous run plus the interval", arguments: [("every 30s", 30), ("every 15m", 900),
        ("every 6h", 21_600), ("every 1d", 86_400), ("every 2w", 1_209_600), ("every 1h30m", 5400), ("Every 1D", 86_400)])
    func intervals(spec: String, seconds: Int) throws {
        let s = try Schedule(parsing: spec)
        let t = Self.utc("2026-03-29T00:59:00Z")
        #expect(s.next(after: t) == t.addingTimeInterval(Double(seconds)))
        if case .interval(let span) = s.rule { #expect(span.seconds == Int64(seconds)) } else { Issue.record("not an interval") }
    }

    // MARK: properties

    static let gregorian: Calendar = {
        var c = Calendar(identifier: .gregorian)
        c.timeZone = TimeZone(identifier: "UTC")!
        return c
    }()

    /// The day arithmetic agrees with Foundation's calendar, and days → date → days is the identity.
    /// (From 1696 on: before 1582 Foundation's Gregorian calendar is Julian, ours is proleptic.)
    @Test func civilDaysAgreeWithFoundation() async {
        await propertyCheck(count: 500, input: Gen.int64(in: -100_000...200_000)) { days in
            let (y, m, d) = CivilTime.civil(fromDays: days)
            #expect(CivilTime.days(year: y, month: m, day: d) == days)
            let c = Self.gregorian.dateComponents([.year, .month, .day, .weekday], from: Date(timeIntervalSince1970: Double(days) * 86_400))
            #expect(c.year == y && c.month == m && c.day == d, "\(days): \(y)-\(m)-\(d) vs \(c)")
            // Foundation counts weekdays from Sunday = 1.
            #expect(c.weekday == CivilTime.weekday(ofDays: days) % 7 + 1)
        }
    }

    /// `next(after:)` equals a brute-force search that walks day by day and
    /// takes each day's month, day and weekday from Foundation's calendar.
    @Test func nextMatchesABruteForceSearch() async {
        // A field: every value (nil) or one or two chosen values.
        let field = { (range: ClosedRange<Int>) in
            Gen.int(in: range).array(of: 1...2).map { Array(Set($0)).sorted() }.optional(valueRate: 0.75)
        }
        await propertyCheck(count: 200, input: field(1...12), field(1...31), field(1...7),
                            Gen.int(in: 0...23).array(of: 1...2), Gen.int(in: 0...59).array(of: 1...2),
                            Gen.int64(in: 0...4_102_444_800)) { months, days, weekdays, hours, minutes, t in
            let spec = CalendarSpec(months: months ?? Array(1...12), days: days ?? Array(1...31),
                                    weekdays: weekdays ?? Array(1...7), hours: Array(Set(hours)).sorted(),
                                    minutes: Array(Set(minutes)).sorted())
            let times = spec.hours.flatMap { h in spec.minutes.map { Int64(h * 3600 + $0 * 60) } }.sorted()
            var expected: Int64?
            var midnight = t - ((t % 86_400) + 86_400) % 86_400
            // 30 years: every spec here matches within 28 (weekday and leap-day cycles).
            for _ in 0..<(30 * 366) {
                let c = Self.gregorian.dateComponents([.month, .day, .weekday], from: Date(timeIntervalSince1970: Double(midnight)))
                // Foundation counts weekdays from Sunday = 1; ISO from Monday = 1.
                if spec.months.contains(c.month!) && spec.days.contains(c.day!) && spec.weekdays.contains((c.weekday! + 5) % 7 + 1),
                   let s = times.first(where: { midnight + $0 > t }) {
                    expected = midnight + s
                    break
                }
                midnight += 86_400
            }
            let ours = spec.next(afterSecond: t)
            if expected == nil {
                #expect(ours == nil || ours! - t >= 30 * 365 * 86_400, "\(spec) after \(t)")
            } else {
                #expect(ours == expected, "\(spec) after \(CivilTime.iso8601(Date(timeIntervalSince1970: Double(t))))")
            }
        }
    }

    /// The next run is later, matches the spec, no matching second lies between
    /// (checked at the previous candidate), and later start times never give earlier runs.
    @Test func nextIsTheFirstMatchAfter() async {
        let field = { (range: ClosedRange<Int>) in
            Gen.int(in: range).array(of: 1...2).map { Array(Set($0)).sorted() }.optional(valueRate: 0.75)
        }
        await propertyCheck(count: 300, input: field(1...12), field(1...31), field(1...7),
                            Gen.int64(in: -2_000_000_000...8_000_000_000), Gen.int64(in: 0...10_000_000)) {
            months, days, weekdays, t, delta in
            let spec = CalendarSpec(months: months ?? Array(1...12), days: days ?? Array(1...31),
                                    weekdays: weekdays ?? Array(1...7), hours: [3, 17], minutes: [0, 45], seconds: [0, 30])
            guard let n = spec.next(afterSecond: t) else { return }
            #expect(n > t)
            #expect(spec.matches(secondsSinceEpoch: n))
            #expect(spec.next(afterSecond: n - 1) == n)
            if let later = spec.next(afterSecond: t + delta) { #expect(later >= n) }
            // Every second between t and n that the time fields allow fails the date fields.
            var s = (t >= 0 ? t / 30 : (t - 29) / 30) * 30 + 30   // the first :00 or :30 after t
            var checked = 0
            while s < n && checked < 2000 {
                #expect(!spec.matches(secondsSinceEpoch: s), "\(s) matches before \(n)")
                s += 30
                checked += 1
            }
        }
    }
}
