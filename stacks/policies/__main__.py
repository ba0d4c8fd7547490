from pulumi_policy import PolicyPack
from rules import POLICIES

PolicyPack("foresight", POLICIES)
