import BlockIO
import Foundation
import Images

/// The outcome of a verification.
public struct VerifyReport: Codable, Sendable {
    public var image: String
    /// "digests" or the device path compared against.
    public var against: String
    public var bytesChecked: UInt64
    /// Clusters (or compare blocks) that differ.
    public var mismatches: Int
    /// Guest offsets of the first few mismatches.
    public var firstMismatchOffsets: [UInt64]
    /// Set when the sizes already disagree.
    public var sizeMismatch: String?

    public var ok: Bool { mismatches == 0 && sizeMismatch == nil }

    public var summary: String {
        if let sizeMismatch { return sizeMismatch }
        if ok { return "\(bytesChecked) bytes match" }
        let where_ = firstMismatchOffsets.map { "offset \($0)" }.joined(separator: ", ")
        return "\(mismatches) cluster\(mismatches == 1 ? "" : "s") differ, first at \(where_)"
    }

    enum CodingKeys: String, CodingKey {
        case image, against, mismatches, ok
        case bytesChecked = "bytes_checked", firstMismatchOffsets = "first_mismatch_offsets"
        case sizeMismatch = "size_mismatch"
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(image, forKey: .image); try c.encode(against, forKey: .against)
        try c.encode(bytesChecked, forKey: .bytesChecked); try c.encode(mismatches, forKey: .mismatches)
        try c.encode(firstMismatchOffsets, forKey: .firstMismatchOffsets)
        try c.encodeIfPresent(sizeMismatch, forKey: .sizeMismatch); try c.encode(ok, forKey: .ok)
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        image = try c.decode(String.self, forKey: .image); against = try c.decode(String.self, forKey: .against)
        bytesChecked = try c.decode(UInt64.self, forKey: .bytesChecked); mismatches = try c.decode(Int.self, forKey: .mismatches)
        firstMismatchOffsets = try c.decode([UInt64].self, forKey: .firstMismatchOffsets)
        sizeMismatch = try c.decodeIfPresent(String.self, forKey: .sizeMismatch)
    }

    init(image: String, against: String) {
        self.image = image; self.against = against
        bytesChecked = 0; mismatches = 0; firstMismatchOffsets = []
    }

    mutating func mismatch(at offset: UInt64) {
        mismatches += 1
        if firstMismatchOffsets.count < 8 { firstMismatchOffsets.append(offset) }
    }
}

/// Checks an image against its digest file, or bit for bit against a device.
public enum Verify {
    /// Reads every cluster of the image and compares its digest with the one
    /// recorded at backup time.
    public static func againstDigests(image: String, reader: ImageReader? = nil,
                                      progress: CopyControl = CopyControl()) throws -> VerifyReport {
        let reader = try reader ?? openImage(path: image)
        let digests = try DigestFile(contentsOf: DigestFile.path(forImage: image))
        var report = VerifyReport(image: image, against: "digests")
        guard digests.deviceSize == reader.virtualSize else {
            report.sizeMismatch = "image size \(reader.virtualSize) differs from the \(digests.deviceSize) bytes its digest file records"
            return report
        }
        let cs = digests.clusterSize
        let perBuffer = max(1, (4 << 20) / cs)
        let buffer = AlignedBuffer(count: perBuffer * cs)
        progress.start(total: reader.virtualSize)
        var cluster = 0
        while cluster < digests.count {
            let n = min(perBuffer, digests.count - cluster)
            let offset = UInt64(cluster) * UInt64(cs)
            let bytes = Int(min(UInt64(n * cs), reader.virtualSize - offset))
            try reader.read(into: buffer.pointer, count: bytes, at: offset)
            for i in 0..<n {
                let len = digests.clusterLength(cluster + i)
                let p = buffer.pointer + i * cs
                let d = DigestFile.digest(of: p, count: len, isZero: ZeroScan.isZero(p, count: len))
                if d != digests.digest(cluster: cluster + i) { report.mismatch(at: UInt64(cluster + i) * UInt64(cs)) }
            }
            report.bytesChecked += UInt64(bytes)
            progress.didRead(bytes); progress.didFinish(bytes)
            cluster += n
        }
        return report
    }

    /// Compares the image's guest bytes with a device (or file), block by block.
    public static func againstDevice(image: String, device: String,
                                     progress: CopyControl = CopyControl()) throws -> VerifyReport {
        let reader = try openImage(path: image)
        let dev = try BlockFile(path: device, mode: .read, direct: true)
        var report = VerifyReport(image: image, against: device)
        guard dev.size == reader.virtualSize else {
            report.sizeMismatch = "image size \(reader.virtualSize) differs from \(device) size \(dev.size)"
            return report
        }
        let block = 4 << 20
        let a = AlignedBuffer(count: block), b = AlignedBuffer(count: block)
        let cs = UInt64(reader.clusterSize)
        progress.start(total: dev.size)
        var offset: UInt64 = 0
        while offset < dev.size {
            let n = Int(min(UInt64(block), dev.size - offset))
            try reader.read(into: a.pointer, count: n, at: offset)
            let aligned = (n + dev.logicalBlockSize - 1) / dev.logicalBlockSize * dev.logicalBlockSize
            let got = try dev.read(into: b.pointer, count: aligned, at: offset)
            guard got >= n else { throw CopyError.unexpectedEnd(path: device, offset: offset + UInt64(got)) }
            if memcmp(a.pointer, b.pointer, n) != 0 {
                // Name the clusters that differ.
                var c: UInt64 = 0
                while c < UInt64(n) {
                    let len = Int(min(cs, UInt64(n) - c))
                    if memcmp(a.pointer + Int(c), b.pointer + Int(c), len) != 0 { report.mismatch(at: offset + c) }
                    c += cs
                }
            }
            report.bytesChecked += UInt64(n)
            progress.didRead(n); progress.didFinish(n)
            offset += UInt64(n)
        }
        return report
    }
}
