#include "libcore/extent_lock.h"

namespace insitu {

ExtentLock::Guard& ExtentLock::Guard::operator=(Guard&& other) noexcept {
  if (this != &other) {
    Release();
    lock_ = other.lock_;
    it_ = other.it_;
    other.lock_ = nullptr;
  }
  return *this;
}

void ExtentLock::Guard::Release() {
  if (lock_ == nullptr) return;
  {
    std::lock_guard<std::mutex> l(lock_->mu_);
    lock_->queue_.erase(it_);
  }
  lock_->cv_.notify_all();
  lock_ = nullptr;
}

bool ExtentLock::Blocked(std::list<Request>::iterator it) const {
  for (auto e = queue_.begin(); e != it; ++e) {
    if (Conflicts(*e, *it)) return true;
  }
  return false;
}

ExtentLock::Guard ExtentLock::Lock(uint64_t first, uint64_t end, bool exclusive) {
  std::unique_lock<std::mutex> l(mu_);
  auto it = queue_.insert(queue_.end(), Request{first, end, exclusive});
  cv_.wait(l, [&] { return !Blocked(it); });
  return Guard(this, it);
}

}  // namespace insitu
