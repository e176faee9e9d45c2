// Status: the result of every fallible operation in libcore.
//
// Modeled on LevelDB's Status: cheap to return when OK, carries a code, the
// errno that caused it (if any) and a human-readable message that says what
// went wrong and, where it helps, what to do.  Front ends map the code to an
// NBD error, an exit code or a message; nothing in libcore throws.
#pragma once

#include <cerrno>
#include <string>
#include <string_view>
#include <utility>

namespace insitu {

class Status {
 public:
  enum class Code {
    kOk = 0,
    kIOError,          // the backing device failed (errno says how)
    kCorruption,       // on-disk data failed a check
    kInvalidArgument,  // the caller asked for something malformed
    kOutOfRange,       // offset/length past the end of the device
    kNoSpace,          // ENOSPC from the backing device
    kNotSupported,     // the operation or feature is not supported
    kBusy,             // e.g. the device is in use / already a volume
  };

  Status() = default;
  static Status OK() { return Status(); }
  static Status IOError(std::string msg, int err = EIO) {
    return Status(err == ENOSPC ? Code::kNoSpace : Code::kIOError, err, std::move(msg));
  }
  static Status Corruption(std::string msg) {
    return Status(Code::kCorruption, EIO, std::move(msg));
  }
  static Status InvalidArgument(std::string msg) {
    return Status(Code::kInvalidArgument, EINVAL, std::move(msg));
  }
  static Status OutOfRange(std::string msg) {
    return Status(Code::kOutOfRange, EINVAL, std::move(msg));
  }
  static Status NoSpace(std::string msg) { return Status(Code::kNoSpace, ENOSPC, std::move(msg)); }
  static Status NotSupported(std::string msg) {
    return Status(Code::kNotSupported, EOPNOTSUPP, std::move(msg));
  }
  static Status Busy(std::string msg) { return Status(Code::kBusy, EBUSY, std::move(msg)); }
  // Builds an error from a failed syscall's errno.
  static Status FromErrno(int err, std::string what);

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  // The errno that best describes this status (0 when OK).
  int err() const { return err_; }
  const std::string& message() const { return msg_; }
  std::string ToString() const;

  // Prefixes the message with context, e.g. "opening /dev/sdb: ...".  A
  // string_view, so that a literal context costs nothing on success (hot
  // paths annotate every call); build a computed context only on failure.
  Status Annotate(std::string_view context) const {
    if (ok()) return *this;
    std::string m(context);
    m += ": ";
    m += msg_;
    return Status(code_, err_, std::move(m));
  }

 private:
  Status(Code code, int err, std::string msg) : code_(code), err_(err), msg_(std::move(msg)) {}

  Code code_ = Code::kOk;
  int err_ = 0;
  std::string msg_;
};

#define INSITU_RETURN_IF_ERROR(expr) \
  do {                               \
    ::insitu::Status _st = (expr);   \
    if (!_st.ok()) return _st;       \
  } while (0)

}  // namespace insitu
