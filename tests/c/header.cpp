// The header compiles as C++ (-std=c++11 -Wall -Werror) and links: names are not mangled.
#include "nudge.h"

#include <cstdio>
#include <cstring>

static int32_t on_step(const NudgeStepMetrics *m, void *user) {
    return m != nullptr && user != nullptr ? 0 : 1;
}

int main() {
    if (nudge_version_number() != NUDGE_VERSION_NUMBER) {
        return 1;
    }
    NudgeTrainOptions o;
    if (nudge_train_options_init(&o, sizeof o) != NUDGE_OK || o.struct_size != sizeof o) {
        return 1;
    }
    NudgeProgressFn f = on_step;
    NudgeStatus s = nudge_train(nullptr, nullptr, &o, f, nullptr, nullptr);
    if (s != NUDGE_ERR_NULL || std::strcmp(nudge_last_error_message(), "adapter is NULL") != 0) {
        return 1;
    }
    NudgePair pair = {"p", "c", "r"};
    NudgeThumb thumb = {"p", "c", 1};
    (void)pair;
    (void)thumb;
    std::printf("header.cpp: ok (%s)\n", nudge_version_string());
    return 0;
}
