// Building a statement whose filters vary while every value stays a bound
// parameter ($1, $2, ...): the text is made only of fixed fragments.
#pragma once

#include <pqxx/pqxx>

#include <string>
#include <vector>

namespace firstread::db {

class Statement {
 public:
  explicit Statement(std::string text) : text_(std::move(text)) {}
  // Appends a fixed fragment.
  Statement& operator<<(const std::string& fragment) {
    text_ += fragment;
    return *this;
  }
  // Binds a value and returns its placeholder, e.g. "$3".
  std::string bind(std::string value) {
    params_.push_back(std::move(value));
    return "$" + std::to_string(params_.size());
  }
  pqxx::result exec(pqxx::transaction_base& txn) const {
    return txn.exec_params(text_, pqxx::prepare::make_dynamic_params(params_));
  }
  const std::string& text() const { return text_; }

 private:
  std::string text_;
  std::vector<std::string> params_;
};

}  // namespace firstread::db
