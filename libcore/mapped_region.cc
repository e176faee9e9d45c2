#include "libcore/mapped_region.h"

#include <signal.h>
#include <sys/mman.h>

#include <cerrno>
#include <mutex>

namespace insitu {

namespace mapped_internal {

sigjmp_buf*& ThreadGuard() {
  // Constant-initialized, so reading it in the handler runs no code.
  static thread_local sigjmp_buf* guard = nullptr;
  return guard;
}

Status FaultStatus() {
  return Status::IOError(
      "reading a mapped page failed (SIGBUS: an I/O error, or the file "
      "was truncated behind the volume)",
      EIO);
}

}  // namespace mapped_internal

namespace {

struct sigaction previous_sigbus;

void OnSigbus(int sig, siginfo_t* info, void* context) {
  if (sigjmp_buf* guard = mapped_internal::ThreadGuard(); guard != nullptr) {
    siglongjmp(*guard, 1);
  }
  // Not a guarded access: hand the signal to whoever had it before (the
  // default kills the process, as it would have without us).  Returning
  // re-runs the access, which faults again under the old disposition.
  if ((previous_sigbus.sa_flags & SA_SIGINFO) != 0 && previous_sigbus.sa_sigaction != nullptr) {
    previous_sigbus.sa_sigaction(sig, info, context);
    return;
  }
  sigaction(SIGBUS, &previous_sigbus, nullptr);
}

void InstallSigbusHandler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa = {};
    sa.sa_sigaction = OnSigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &previous_sigbus);
  });
}

}  // namespace

MappedRegion::~MappedRegion() {
  if (base_ != nullptr) munmap(const_cast<uint8_t*>(base_), size_);
}

Status MappedRegion::Map(int fd, uint64_t size, const std::string& what, MappedRegion* out) {
  if (out->base_ != nullptr) return Status::InvalidArgument(what + " is already mapped");
  if (size == 0) return Status::OK();
  InstallSigbusHandler();
  void* p = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return Status::FromErrno(errno, "mapping " + what);
  out->base_ = static_cast<const uint8_t*>(p);
  out->size_ = size;
  return Status::OK();
}

}  // namespace insitu
