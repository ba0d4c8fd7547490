# Foresight marketplace image for Azure: Microsoft's Ubuntu HPC image (NVIDIA driver installed) plus the
# NVIDIA container toolkit, the service image and foresight.service, hardened for the Azure Marketplace
# certification and deprovisioned with waagent. The result goes to an Azure Compute Gallery, which is
# where Partner Center takes VM offer images from.
#
#   az login && packer build -var subscription_id=... -var resource_group=... -var gallery_name=... \
#     -var service_image_archive=foresight.tar -var build_ssh_cidr=203.0.113.7/32 images/packer/azure
#
# Packer 1.6 has the azure-arm builder built in; Packer >= 1.7 first needs
# `packer plugins install github.com/hashicorp/azure` (no required_plugins block, so 1.6 parses this).

variable "subscription_id" {
  type = string
}

variable "resource_group" {
  type        = string
  description = "Resource group holding the gallery and the managed image."
}

variable "gallery_name" {
  type = string
}

variable "location" {
  type    = string
  default = "eastus"
}

variable "vm_size" {
  type        = string
  default     = "Standard_NC4as_T4_v3"
  description = "A GPU size, so the build can check that torch in the service image sees the GPU."
}

variable "image_publisher" {
  type    = string
  default = "microsoft-dsvm"
}

variable "image_offer" {
  type    = string
  default = "ubuntu-hpc"
}

variable "image_sku" {
  type        = string
  default     = "2204"
  description = "Ubuntu 22.04 HPC: NVIDIA driver, CUDA and Docker preinstalled, Gen2."
}

variable "build_ssh_cidr" {
  type        = string
  description = "The only address range the temporary build VM admits SSH from (the build host's address)."
}

variable "service_image_archive" {
  type        = string
  description = "docker-archive tar of the service image (docker save / podman save)."
}

variable "service_image" {
  type        = string
  default     = "localhost/foresight:0.1.0"
  description = "The tag inside service_image_archive."
}

variable "image_version" {
  type        = string
  default     = "0.1.0"
  description = "Also the gallery image version, so it must read MAJOR.MINOR.PATCH."
}

variable "nvidia_container_toolkit_version" {
  type        = string
  default     = "1.17.8-1"
  description = "Lowest NVIDIA container toolkit package version: the base's toolkit is kept at or above it, else this one is installed; empty keeps any."
}

variable "ubuntu_mirror" {
  type        = string
  default     = ""
  description = "An https:// Ubuntu mirror for the archive and security updates; empty keeps the base's hosts, switched to https (the build fails if they do not serve it)."
}

locals {
  build_time = regex_replace(timestamp(), "[- TZ:]", "")
}

source "azure-arm" "foresight" {
  subscription_id    = var.subscription_id
  use_azure_cli_auth = true

  location        = var.location
  vm_size         = var.vm_size
  os_type         = "Linux"
  image_publisher = var.image_publisher
  image_offer     = var.image_offer
  image_sku       = var.image_sku
  os_disk_size_gb = 100

  allowed_inbound_ip_addresses = [var.build_ssh_cidr]

  managed_image_name                = "foresight-${var.image_version}-${local.build_time}"
  managed_image_resource_group_name = var.resource_group

  shared_image_gallery_destination {
    resource_group      = var.resource_group
    gallery_name        = var.gallery_name
    image_name          = "foresight"
    image_version       = var.image_version
    replication_regions = [var.location]
  }

  azure_tags = {
    product = "foresight"
    version = var.image_version
  }
}

build {
  sources = ["source.azure-arm.foresight"]

  provisioner "file" {
    source      = var.service_image_archive
    destination = "/tmp/foresight-image.tar"
    generated   = true
  }

  provisioner "file" {
    source      = "${path.root}/../files/"
    destination = "/tmp/foresight-files"
  }

  provisioner "shell" {
    execute_command = "chmod +x {{ .Path }}; sudo -E env {{ .Vars }} {{ .Path }}"
    environment_vars = [
      "FORESIGHT_IMAGE=${var.service_image}",
      "NVIDIA_CTK_VERSION=${var.nvidia_container_toolkit_version}",
      "UBUNTU_MIRROR=${var.ubuntu_mirror}",
    ]
    scripts = [
      "${path.root}/../provision/05-apt-https.sh",
      "${path.root}/../provision/10-container-runtime.sh",
      "${path.root}/../provision/20-service.sh",
      "${path.root}/../provision/80-harden.sh",
      "${path.root}/../provision/90-verify-hardening.sh",
    ]
  }

  # Azure's own generalisation, last: it also deletes the build user that Packer logged in as.
  provisioner "shell" {
    execute_command = "chmod +x {{ .Path }}; {{ .Vars }} sudo -E sh '{{ .Path }}'"
    inline          = ["/usr/sbin/waagent -force -deprovision+user && export HISTSIZE=0 && sync"]
    inline_shebang  = "/bin/sh -e"
    skip_clean      = true
  }
}
