#pragma once

#include "app/runtime.h"

namespace firstread::app {

inline constexpr const char* kVersion = "0.1.0";

int run_serve(const Args& args);
int run_db(const Args& args);
int run_studies(const Args& args);
int run_jobs(const Args& args);
int run_results(const Args& args);
int run_reprocess(const Args& args);
int run_token_create(const Args& args);  // token_command.cpp
// GSCo case library (issue 15), app/case_commands.cpp
int run_cases_import(const Args& args);
int run_cases_list(const Args& args);
int run_confirm(const Args& args);

}  // namespace firstread::app
