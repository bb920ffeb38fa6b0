/// ringback's version, written in this one place: `ringback --version`,
/// `ringbackd --version`, the QMP greeting and the Debian package
/// (packaging/build-deb.sh asks the built `ringback --version`) take it from here.
public enum RingbackVersion {
    public static let major = 0
    public static let minor = 1
    public static let micro = 0
    /// "MAJOR.MINOR.MICRO".
    public static var string: String { "\(major).\(minor).\(micro)" }
}
