#include "libcore/status.h"

#include <cstring>

namespace insitu {

Status Status::FromErrno(int err, std::string what) {
  std::string msg = std::move(what) + ": " + std::strerror(err);
  switch (err) {
    case ENOSPC:
    case EDQUOT:
      return Status(Code::kNoSpace, ENOSPC, std::move(msg));
    case EINVAL:
      return Status(Code::kInvalidArgument, EINVAL, std::move(msg));
    case EOPNOTSUPP:
      return Status(Code::kNotSupported, EOPNOTSUPP, std::move(msg));
    case EBUSY:
      return Status(Code::kBusy, EBUSY, std::move(msg));
    default:
      return Status(Code::kIOError, err, std::move(msg));
  }
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  return msg_;
}

}  // namespace insitu
