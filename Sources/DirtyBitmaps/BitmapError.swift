/// A refused bitmap operation: which bitmap, on which device, and why, in QEMU's
/// wording (`message`) so that the control protocol can pass it on unchanged.
public struct BitmapError: Error, CustomStringConvertible, Equatable, Sendable {
    /// What went wrong, as a struct over a private enum so that new cases do not break callers.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case notFound = "not found"
            case alreadyExists = "already exists"
            case busy
            case inconsistent
            case invalidName = "invalid name"
            case invalidGranularity = "invalid granularity"
            case sizeMismatch = "size mismatch"
            case noSuccessor = "no successor"
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// No bitmap of that name on the device.
        public static let notFound = Code(.notFound)
        /// `add` of a name already in use on the device.
        public static let alreadyExists = Code(.alreadyExists)
        /// A job holds the bitmap.
        public static let busy = Code(.busy)
        /// The bitmap may have missed writes.
        public static let inconsistent = Code(.inconsistent)
        /// A name outside 1–1023 bytes.
        public static let invalidName = Code(.invalidName)
        /// A granularity that is not a power of two from 512 to 2 GiB.
        public static let invalidGranularity = Code(.invalidGranularity)
        /// Bitmaps (or a bitmap and its device) of different sizes.
        public static let sizeMismatch = Code(.sizeMismatch)
        /// Abdicate, reclaim or finish on a bitmap that no job froze.
        public static let noSuccessor = Code(.noSuccessor)

        public var description: String { base.rawValue }
    }

    public let code: Code
    /// The bitmap the operation was about.
    public let bitmap: String
    /// The device, when the operation went through a `BitmapSet`.
    public internal(set) var device: String?
    /// QEMU's text for the failure, without the device.
    public let message: String

    init(_ code: Code, bitmap: String, device: String? = nil, _ message: String) {
        self.code = code
        self.bitmap = bitmap
        self.device = device
        self.message = message
    }

    /// The message followed by the device, e.g. `Bitmap 'nightly' is currently in
    /// use by another operation and cannot be used (device /dev/sdb)`.
    public var description: String {
        guard let device else { return message }
        return "\(message) (device \(device))"
    }

    static func notFound(_ name: String, device: String) -> BitmapError {
        BitmapError(.notFound, bitmap: name, device: device, "Dirty bitmap '\(name)' not found")
    }

    static func alreadyExists(_ name: String, device: String) -> BitmapError {
        BitmapError(.alreadyExists, bitmap: name, device: device, "Bitmap already exists: \(name)")
    }

    static func refused(_ code: Code, _ name: String, device: String) -> BitmapError {
        switch code {
        case .busy:
            BitmapError(code, bitmap: name, device: device,
                        "Bitmap '\(name)' is currently in use by another operation and cannot be used")
        case .inconsistent:
            BitmapError(code, bitmap: name, device: device,
                        "Bitmap '\(name)' is inconsistent and cannot be used")
        default:
            BitmapError(code, bitmap: name, device: device, "Bitmap '\(name)' cannot be used: \(code)")
        }
    }

    static func noSuccessor(_ name: String, device: String) -> BitmapError {
        BitmapError(.noSuccessor, bitmap: name, device: device,
                    "Bitmap '\(name)' has no successor: no job has frozen it")
    }

    /// The same error with the device filled in.
    func on(_ device: String) -> BitmapError {
        var e = self
        e.device = device
        return e
    }
}
