import Foundation

/// Dates in UTC by arithmetic alone: the proleptic Gregorian calendar,
/// counted in days since 1970-01-01. No time zone, no daylight saving time,
/// no Foundation calendar: the same input always gives the same output.
public enum CivilTime {
    /// (year, month 1–12, day 1–31) of a day number (0 = 1970-01-01).
    public static func civil(fromDays days: Int64) -> (year: Int, month: Int, day: Int) {
        // Shift the epoch to 0000-03-01 so that a leap day is the last day of
        // its "year", then split into 400-year eras of 146097 days.
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097                                                  // 0...146096
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365   // 0...399
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)    // 0...365, from March 1
        let monthFromMarch = (5 * dayOfYear + 2) / 153                                    // 0...11
        let day = dayOfYear - (153 * monthFromMarch + 2) / 5 + 1
        let month = monthFromMarch < 10 ? monthFromMarch + 3 : monthFromMarch - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        return (Int(year), Int(month), Int(day))
    }

    /// The day number of a (year, month, day); the inverse of `civil(fromDays:)`.
    public static func days(year: Int, month: Int, day: Int) -> Int64 {
        let y = Int64(month <= 2 ? year - 1 : year)
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let monthFromMarch = Int64((month + 9) % 12)
        let dayOfYear = (153 * monthFromMarch + 2) / 5 + Int64(day) - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    /// ISO weekday of a day number: 1 = Monday … 7 = Sunday (1970-01-01 was a Thursday).
    public static func weekday(ofDays days: Int64) -> Int {
        Int(((days + 3) % 7 + 7) % 7) + 1
    }

    public static func isLeapYear(_ y: Int) -> Bool { (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 }

    public static func daysInMonth(year: Int, month: Int) -> Int {
        switch month {
        case 2: isLeapYear(year) ? 29 : 28
        case 4, 6, 9, 11: 30
        default: 31
        }
    }

    /// The broken-down UTC time of a whole second since the epoch.
    public static func components(_ seconds: Int64)
        -> (year: Int, month: Int, day: Int, hour: Int, minute: Int, second: Int, weekday: Int) {
        let days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        let secondOfDay = Int(seconds - days * 86_400)
        let (y, m, d) = civil(fromDays: days)
        return (y, m, d, secondOfDay / 3600, secondOfDay / 60 % 60, secondOfDay % 60, weekday(ofDays: days))
    }

    private static func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }

    private static func four(_ n: Int) -> String {
        String(repeating: "0", count: max(0, 4 - String(n).count)) + String(n)
    }

    /// `2026-11-26T18:43:32Z` (whole seconds, UTC).
    public static func iso8601(_ date: Date) -> String {
        let c = components(Int64(date.timeIntervalSince1970.rounded(.down)))
        return "\(four(c.year))-\(two(c.month))-\(two(c.day))T\(two(c.hour)):\(two(c.minute)):\(two(c.second))Z"
    }

    /// `20261126T184332Z`: the compact form used in file and folder names.
    public static func compact(_ date: Date) -> String {
        let c = components(Int64(date.timeIntervalSince1970.rounded(.down)))
        return "\(four(c.year))\(two(c.month))\(two(c.day))T\(two(c.hour))\(two(c.minute))\(two(c.second))Z"
    }

    /// Reads the compact form back (nil when `text` is not exactly of that form).
    public static func parseCompact(_ text: some StringProtocol) -> Date? {
        let b = Array(text.utf8)
        guard b.count == 16, b[8] == UInt8(ascii: "T"), b[15] == UInt8(ascii: "Z") else { return nil }
        func number(_ r: Range<Int>) -> Int? {
            guard b[r].allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
            return b[r].reduce(0) { $0 * 10 + Int($1 - 0x30) }
        }
        guard let y = number(0..<4), let mo = number(4..<6), let d = number(6..<8),
              let h = number(9..<11), let mi = number(11..<13), let s = number(13..<15),
              (1...12).contains(mo), (1...daysInMonth(year: y, month: mo)).contains(d),
              h < 24, mi < 60, s < 60 else { return nil }
        let seconds = days(year: y, month: mo, day: d) * 86_400 + Int64(h * 3600 + mi * 60 + s)
        return Date(timeIntervalSince1970: Double(seconds))
    }

    /// Reads `iso8601(_:)`'s form back.
    public static func parseISO8601(_ text: String) -> Date? {
        let b = Array(text.utf8)
        guard b.count == 20, b[4] == 0x2d, b[7] == 0x2d, b[10] == UInt8(ascii: "T"), b[13] == 0x3a, b[16] == 0x3a else { return nil }
        var bytes: [UInt8] = []
        for r in [0..<4, 5..<7, 8..<10, 10..<11, 11..<13, 14..<16, 17..<19] { bytes += b[r] }
        bytes.append(UInt8(ascii: "Z"))
        let compact = String(decoding: bytes, as: UTF8.self)
        return b[19] == UInt8(ascii: "Z") ? parseCompact(compact) : nil
    }
}
