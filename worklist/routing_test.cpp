#include "worklist/routing.h"

#include <gtest/gtest.h>

using firstread::config::Route;
using firstread::worklist::matching_routes;
using firstread::worklist::StudyFacts;

TEST(Routing, EmptyMatchTakesEverything) {
  Route r;
  r.name = "any";
  EXPECT_TRUE(firstread::worklist::route_matches(r, StudyFacts{{"CT"}, {}, "X"}));
  EXPECT_TRUE(firstread::worklist::route_matches(r, StudyFacts{}));
}

TEST(Routing, ModalityBodyPartAndCallingAeMustAllMatch) {
  Route chest;
  chest.name = "chest";
  chest.match.modalities = {"CR", "DX"};
  chest.match.body_parts = {"chest"};
  Route derm;
  derm.name = "derm";
  derm.match.modalities = {"XC"};
  derm.match.calling_aes = {"DERMCAM"};
  std::vector<Route> routes{chest, derm};

  auto names = [&](const StudyFacts& f) {
    std::vector<std::string> out;
    for (auto* r : matching_routes(routes, f)) out.push_back(r->name);
    return out;
  };
  EXPECT_EQ(names({{"DX"}, {"CHEST"}, "ROUTER"}), std::vector<std::string>{"chest"});
  EXPECT_EQ(names({{"DX"}, {"HAND"}, "ROUTER"}), std::vector<std::string>{});
  EXPECT_EQ(names({{"XC"}, {}, "DERMCAM"}), std::vector<std::string>{"derm"});
  EXPECT_EQ(names({{"XC"}, {}, "OTHER"}), std::vector<std::string>{});
  EXPECT_EQ(names({{"CR", "XC"}, {"CHEST"}, "DERMCAM"}), (std::vector<std::string>{"chest", "derm"}));
}
