import Foundation

/// When a plan runs: an interval after its last run, or the times of a
/// calendar. Calendar times are in **UTC**: no time zone and no daylight
/// saving time, so every day has 24 hours and `next(after:)` is a pure function.
///
/// Grammar (a subset of systemd's `OnCalendar=`):
///
///     every 30s | every 15m | every 6h | every 1d | every 2w | every 1h30m
///     hourly | daily | weekly | monthly          (at minute 0 / midnight / Monday / the 1st)
///     daily HH:MM[:SS]
///     [WEEKDAYS] [[YEAR-]MONTH-DAY] HH:MM[:SS] [UTC]
///
/// WEEKDAYS is a comma list of names or ranges (`Mon..Fri`, `Sat,Sun`). Each
/// numeric field is `*` or a comma list of values and ranges (`1..7`), each
/// optionally with a step (`*/2`, `0/15`). Examples: `Mon..Fri 01:00`,
/// `*-*-* 02:30`, `Sat *-*-1..7 03:00` (the first Saturday of a month),
/// `*-*-* *:0/15` (every quarter hour).
public struct Schedule: Equatable, Sendable, CustomStringConvertible {
    public enum Rule: Equatable, Sendable {
        /// Runs this long after the previous run started.
        case interval(TimeSpan)
        /// Runs at each matching second, in UTC.
        case calendar(CalendarSpec)
    }

    public let rule: Rule
    /// The text as written (spaces collapsed).
    public let text: String

    public init(parsing raw: String) throws(ValueError) {
        let words = raw.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        text = words.joined(separator: " ")
        guard let first = words.first else {
            throw ValueError("expected a schedule such as \"every 6h\", \"daily 02:30\" or \"Mon..Fri 01:00\", got an empty string")
        }
        if first.lowercased() == "every" {
            guard words.count == 2 else {
                throw ValueError("expected \"every\" and one duration such as \"every 6h\", got \(quoted(raw))")
            }
            let span = try TimeSpan(parsing: words[1])
            guard span.seconds >= 1 else { throw ValueError("the interval of \(quoted(raw)) must be at least 1s") }
            rule = .interval(span)
        } else {
            rule = .calendar(try CalendarSpec(parsing: words, raw: raw))
        }
    }

    public var description: String { text }

    /// The first time after `date` at which the plan is due: for an interval,
    /// `date` plus the interval; for a calendar, the first matching whole
    /// second strictly later than `date`. nil when the calendar never matches again.
    public func next(after date: Date) -> Date? {
        switch rule {
        case .interval(let span):
            return date.addingTimeInterval(Double(span.seconds))
        case .calendar(let spec):
            let t = date.timeIntervalSince1970
            guard t.isFinite, abs(t) < 1e15 else { return nil }
            return spec.next(afterSecond: Int64(t.rounded(.down))).map { Date(timeIntervalSince1970: Double($0)) }
        }
    }
}

/// A calendar event: the allowed values of each field, sorted. A field that
/// allows every value holds all of them (except `years`: nil is every year).
public struct CalendarSpec: Equatable, Sendable {
    public var years: [Int]?
    public var months: [Int]
    public var days: [Int]
    /// ISO weekdays, 1 = Monday … 7 = Sunday.
    public var weekdays: [Int]
    public var hours: [Int]
    public var minutes: [Int]
    public var seconds: [Int]

    public init(years: [Int]? = nil, months: [Int] = Array(1...12), days: [Int] = Array(1...31),
                weekdays: [Int] = Array(1...7), hours: [Int], minutes: [Int], seconds: [Int] = [0]) {
        self.years = years
        self.months = months
        self.days = days
        self.weekdays = weekdays
        self.hours = hours
        self.minutes = minutes
        self.seconds = seconds
    }

    static let weekdayNames = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    static let longWeekdayNames = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]

    init(parsing input: [String], raw: String) throws(ValueError) {
        var words = input
        if words.count > 1, words.last!.uppercased() == "UTC" { words.removeLast() }
        let shorthand = words[0].lowercased()
        let all = Array(0...59)
        switch (shorthand, words.count) {
        case ("minutely", 1):
            self.init(hours: Array(0...23), minutes: all)
            return
        case ("hourly", 1):
            self.init(hours: Array(0...23), minutes: [0])
            return
        case ("daily", 1):
            self.init(hours: [0], minutes: [0])
            return
        case ("weekly", 1):
            self.init(weekdays: [1], hours: [0], minutes: [0])
            return
        case ("monthly", 1):
            self.init(days: [1], hours: [0], minutes: [0])
            return
        case ("daily", 2):
            words = [words[1]]
        case ("hourly", _), ("weekly", _), ("monthly", _), ("minutely", _), ("daily", _):
            throw ValueError("\(quoted(raw)): '\(words[0])' takes \(shorthand == "daily" ? "at most a time (\"daily 02:30\")" : "nothing after it")")
        default:
            break
        }

        var weekdays = Array(1...7)
        var date: String?
        var time: String?
        for (index, word) in words.enumerated() {
            if word.contains(":") {
                guard time == nil else { throw ValueError("\(quoted(raw)) has two times") }
                time = word
            } else if word.contains("-") || word.first == "*" {
                guard date == nil, time == nil else {
                    throw ValueError("\(quoted(raw)): the date goes before the time, as in \"Mon *-*-1..7 03:00\"")
                }
                date = word
            } else if word.first?.isLetter == true {
                guard index == 0 else {
                    throw ValueError("\(quoted(raw)): the weekdays go first, as in \"Mon..Fri 01:00\"")
                }
                do {
                    weekdays = try Self.weekdays(word, raw: raw)
                } catch where words.count == 1 {
                    throw ValueError("cannot read \(quoted(raw)) as a schedule; expected an interval (\"every 6h\") or a "
                                     + "calendar time (\"daily 02:30\", \"Mon..Fri 01:00\", \"*-*-* 02:30\")")
                }
            } else {
                throw ValueError("cannot read \(quoted(word)) in the schedule \(quoted(raw)); expected a duration "
                                 + "(\"every 6h\") or a calendar time (\"daily 02:30\", \"Mon..Fri 01:00\", \"*-*-* 02:30\")")
            }
        }
        guard let time else {
            throw ValueError("\(quoted(raw)) needs a time of day such as 02:30 (or write \"every ...\" for an interval)")
        }
        var years: [Int]?
        var months = Array(1...12), days = Array(1...31)
        if let date {
            let parts = date.split(separator: "-", omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 2 || parts.count == 3 else {
                throw ValueError("\(quoted(raw)): expected the date as YEAR-MONTH-DAY or MONTH-DAY, got \(quoted(date))")
            }
            if parts.count == 3 && parts[0] != "*" {
                years = try Self.field(parts[0], 1970...9999, "year", raw: raw)
            }
            months = try Self.field(parts[parts.count - 2], 1...12, "month", raw: raw)
            days = try Self.field(parts[parts.count - 1], 1...31, "day", raw: raw)
        }
        let clock = time.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard clock.count == 2 || clock.count == 3 else {
            throw ValueError("\(quoted(raw)): expected the time as HH:MM or HH:MM:SS, got \(quoted(time))")
        }
        let hours = try Self.field(clock[0], 0...23, "hour", raw: raw)
        let minutes = try Self.field(clock[1], 0...59, "minute", raw: raw)
        let seconds = clock.count == 3 ? try Self.field(clock[2], 0...59, "second", raw: raw) : [0]
        self.init(years: years, months: months, days: days, weekdays: weekdays, hours: hours, minutes: minutes, seconds: seconds)

        // A date that no month has (30 February) would never run: refuse it now.
        let possible = months.contains { m in
            days.contains { d in
                m == 2 && d == 29
                    ? (years?.contains(where: CivilTime.isLeapYear) ?? true)
                    : d <= CivilTime.daysInMonth(year: 2001, month: m)
            }
        }
        guard possible else { throw ValueError("\(quoted(raw)) names a day that none of its months has, so it would never run") }
    }

    private static func weekdays(_ word: String, raw: String) throws(ValueError) -> [Int] {
        func day(_ name: Substring) throws(ValueError) -> Int {
            let n = name.lowercased()
            if let i = weekdayNames.firstIndex(of: n) ?? longWeekdayNames.firstIndex(of: n) { return i + 1 }
            throw ValueError("\(quoted(raw)): unknown weekday \(quoted(String(name))) (Mon, Tue, Wed, Thu, Fri, Sat, Sun)")
        }
        var out = Set<Int>()
        for item in word.split(separator: ",", omittingEmptySubsequences: false) {
            if let range = item.range(of: "..") {
                let a = try day(item[..<range.lowerBound]), b = try day(item[range.upperBound...])
                guard a <= b else {
                    throw ValueError("\(quoted(raw)): the range \(item) runs backwards (weeks start on Monday); write it as two ranges")
                }
                out.formUnion(a...b)
            } else {
                out.insert(try day(item))
            }
        }
        return out.sorted()
    }

    /// One numeric field: `*`, or a comma list of `N`, `A..B`, each with an optional `/STEP`.
    private static func field(_ text: String, _ bounds: ClosedRange<Int>, _ name: String, raw: String) throws(ValueError) -> [Int] {
        var out = Set<Int>()
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            var body = item
            var step = 1
            if let slash = item.firstIndex(of: "/") {
                guard let s = Int(item[item.index(after: slash)...]), s >= 1 else {
                    throw ValueError("\(quoted(raw)): the step in \(quoted(String(item))) must be a whole number of at least 1")
                }
                step = s
                body = item[..<slash]
            }
            func number(_ s: Substring) throws(ValueError) -> Int {
                guard !s.isEmpty, s.allSatisfy({ $0.isASCII && $0.isNumber }), let n = Int(s), bounds.contains(n) else {
                    throw ValueError("\(quoted(raw)): the \(name) \(quoted(String(s))) must be a number from "
                                     + "\(bounds.lowerBound) to \(bounds.upperBound) or *")
                }
                return n
            }
            let from: Int, to: Int
            if body == "*" {
                (from, to) = (bounds.lowerBound, bounds.upperBound)
            } else if let range = body.range(of: "..") {
                from = try number(body[..<range.lowerBound])
                to = try number(body[range.upperBound...])
                guard from <= to else { throw ValueError("\(quoted(raw)): the \(name) range \(body) runs backwards") }
            } else {
                from = try number(body)
                // "0/15": from 0 on, every 15 (as systemd reads it).
                to = step > 1 ? bounds.upperBound : from
            }
            out.formUnion(stride(from: from, through: to, by: step))
        }
        return out.sorted()
    }

    /// Whether the whole second `t` (since the epoch, UTC) matches every field.
    public func matches(secondsSinceEpoch t: Int64) -> Bool {
        let c = CivilTime.components(t)
        return (years?.contains(c.year) ?? true) && months.contains(c.month) && days.contains(c.day)
            && weekdays.contains(c.weekday) && hours.contains(c.hour) && minutes.contains(c.minute) && seconds.contains(c.second)
    }

    /// The first matching second strictly after `t`; nil when none comes in
    /// the next 400 years (the Gregorian calendar repeats after that) or
    /// after the last year the spec names.
    public func next(afterSecond t: Int64) -> Int64? {
        let start = t + 1
        var day = start >= 0 ? start / 86_400 : (start - 86_399) / 86_400
        var secondOfDay = Int(start - day * 86_400)
        let startYear = CivilTime.civil(fromDays: day).year
        while true {
            let (y, m, d) = CivilTime.civil(fromDays: day)
            if y > startYear + 400 { return nil }
            if let years, !years.contains(y) {
                guard let nextYear = years.first(where: { $0 > y }) else { return nil }
                day = CivilTime.days(year: nextYear, month: 1, day: 1)
                secondOfDay = 0
                continue
            }
            if !months.contains(m) {
                day = m == 12 ? CivilTime.days(year: y + 1, month: 1, day: 1) : CivilTime.days(year: y, month: m + 1, day: 1)
                secondOfDay = 0
                continue
            }
            if days.contains(d) && weekdays.contains(CivilTime.weekday(ofDays: day)),
               let s = firstTime(atOrAfter: secondOfDay) {
                return day * 86_400 + Int64(s)
            }
            day += 1
            secondOfDay = 0
        }
    }

    /// The first allowed second of a day at or after `secondOfDay`.
    func firstTime(atOrAfter secondOfDay: Int) -> Int? {
        let h0 = secondOfDay / 3600, m0 = secondOfDay / 60 % 60, s0 = secondOfDay % 60
        for h in hours where h >= h0 {
            if h > h0 { return h * 3600 + minutes[0] * 60 + seconds[0] }
            for m in minutes where m >= m0 {
                if m > m0 { return h * 3600 + m * 60 + seconds[0] }
                if let s = seconds.first(where: { $0 >= s0 }) { return h * 3600 + m * 60 + s }
            }
        }
        return nil
    }
}
